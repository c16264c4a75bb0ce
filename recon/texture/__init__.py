"""Stage 4, texture: the UV atlas (`atlas`), per-view photometric gains (`photometric`) and the
bake that colours every texel from the views that see it best (`bake`)."""
