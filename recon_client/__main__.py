"""`python -m recon_client` = the `recon` command."""

import sys

from recon_client.cli import main

sys.exit(main())
