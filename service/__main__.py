"""`python -m service` runs the sorahook command line."""

from service.cli import main

raise SystemExit(main())
