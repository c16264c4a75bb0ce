"""Stage 3, geometry: the depth-carved visual hull as a signed field with a shell behind observed
depth surfaces (so thin and open walls survive), meshed by marching cubes, cleaned and decimated
(`carve`)."""
