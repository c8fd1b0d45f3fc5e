import sys

from coherentize.cli import main

sys.exit(main())
