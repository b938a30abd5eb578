"""Land-use maps of regions: many scenes in one command, each scene one task (a worker loads the
verified model once), run in this process, local processes or on Dask; resumable per scene, with a
summary of areas and a mosaic. Every scene is mapped by ``maps``, unchanged.
"""
