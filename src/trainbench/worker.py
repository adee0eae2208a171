"""`python -m trainbench.worker`: run one planned benchmark in this process (sweep isolation).

Reads {"config": RunConfig as a dict, "model_name": str} as JSON on stdin, writes the record,
exits 0 when the record was written (whatever the run's status).
"""

from __future__ import annotations

import json
import sys

from trainbench import config, runner


def main() -> None:
    request = json.loads(sys.stdin.read())
    plan = runner.prepare(config.from_dict(request["config"]), request["model_name"])
    runner.execute(plan)


if __name__ == "__main__":
    main()
