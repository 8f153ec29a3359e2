"""``python -m srt_kernel.kernel -f CONNECTION_FILE``: the kernelspec's argv."""

import sys

from srt_kernel.kernel.supervisor import main

sys.exit(main())
