"""Cases with known truth for tests, the bench and the bundled sample: clean renders of the test
meshes (`cases`), open and thin meshes (`open_surfaces`), studio-photograph renders (`photo`),
generator stand-ins (`generated`) and deliberately wrong meshes for the quality gate
(`wrong_meshes`)."""
