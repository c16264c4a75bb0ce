"""Stage 6a, export: the mesh files (`meshfiles`: GLB, OBJ, PLY, STL, glTF) and the preview
images and turntable (`preview`)."""
