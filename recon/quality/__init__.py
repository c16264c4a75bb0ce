"""Stage 6b, quality: quality.json (`metrics`), the quality gate that decides
QUALITY_THRESHOLD_FAILED (`gate`), and accuracy against a known mesh for the bench (`evaluate`)."""
