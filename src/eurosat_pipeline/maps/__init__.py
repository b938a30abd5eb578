"""Land-use maps from scenes: what a scene is (a raster, Sentinel-2 band files, a STAC item), its
bands matched by name, tiling, scaling and nodata, the map's files (GeoTIFF, preview, area table),
and regions of many scenes on local processes or Dask with their summary and mosaic. Every tile
is classified by an engine of ``inference``.
"""
