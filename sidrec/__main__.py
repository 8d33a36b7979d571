import sys

from sidrec.cli import main

sys.exit(main())
