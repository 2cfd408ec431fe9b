"""`python -m podspan_demo cluster` prints what a person would check: the profile as `kubectl get tp`
shows it and a waterfall per trace, then leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.e2e.local import test_local

pytestmark = test_local.pytestmark


def test_cluster_demo_shows_status_and_traces() -> None:
    done = subprocess.run([sys.executable, "-m", "podspan_demo", "cluster", "--requests", "2"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^NAME\s+MATCHED\s+TRACED\s+NODES READY\s+READY\s+AGE$", out, re.MULTILINE), out
    assert re.search(r"^web\s+2\s+2\s+1\s+True\s+\d+s$", out, re.MULTILINE), out
    # Two users (frontend -> backend -> Redis miss, PostgreSQL, Redis set) and the 404 path.
    assert len(re.findall(r"^trace [0-9a-f]{32}  6 spans", out, re.MULTILINE)) == 2, out
    assert len(re.findall(r"^trace [0-9a-f]{32}  3 spans", out, re.MULTILINE)) == 1, out
    assert "GET /users/{id}  SERVER  backend/backend-" in out
    assert "CLIENT  backend/backend-" in out and "db.system.name=postgresql" in out
    assert "the unselected pod: no spans" in out and "other-" not in out.split("OTLP receiver got")[1]
    assert "Ready=True (Tracing)" in out
