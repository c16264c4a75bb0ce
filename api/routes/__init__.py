"""One module per endpoint group: health, submit, status, cancel, download."""
