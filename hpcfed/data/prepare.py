"""``python -m hpcfed.data.prepare [config=FILE] [data.key=value ...] [--force]``: write client shards.

The implementation lives in :mod:`hpcfed.data.pipeline` (``prepare_shards`` / ``ensure_prepared`` in
:mod:`hpcfed.data`).
"""

import sys

from hpcfed.data.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
