import sys

from fxprune.app.cli import main

sys.exit(main())
