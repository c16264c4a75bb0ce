"""Stage 1, decode: uploaded PNGs -> float images, object masks (alpha, plain or photographed
background), outline coverage and raw depth maps (`decode.decode_inputs`)."""
