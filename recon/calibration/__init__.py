"""Stage 2, calibrate: the six-view rig and its pinhole cameras (`rig`), the search for the rig
variant, field of view and per-view depth encoding (`calibrate`), and the fast projection both
that search and the geometry use (`projection`)."""
