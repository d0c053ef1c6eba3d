import sys

from fxprune.cli import main

sys.exit(main())
