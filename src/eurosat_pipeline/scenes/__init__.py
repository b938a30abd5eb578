"""What a scene is and what is read from it before any model sees it: a raster, Sentinel-2 band files
(a folder, a SAFE product), STAC items and their assets (:mod:`.sources`), and the cloud masks that
say which of its places are not to be mapped (:mod:`.masks`)."""
