"""The pod's grace period and the gateway's shutdown budget are one number (issue 18, item 7).

The kubelet SIGKILLs a pod ``terminationGracePeriodSeconds`` after SIGTERM
(a preStop hook's time included). The gateway plans its shutdown from
``--shutdown-grace``; if the chart passed it a different number, or added a
preStop hook the gateway does not know about, a shutdown could be cut off
mid-answer.
"""

from __future__ import annotations

from typing import Any

import pytest

from mailgate.cli import build_parser
from mailgate.gateway.app import ShutdownPlan
from mailgate.gateway.main import IN_CLUSTER_SHUTDOWN_DELAY
from tests.k8s.helm.helm import Helm


@pytest.mark.parametrize("grace", [None, 45, 10])
def test_gateway_plans_its_shutdown_within_the_pods_grace_period(helm_offline: Helm, grace: int | None) -> None:
    values: dict[str, Any] = {} if grace is None else {"gateway": {"terminationGracePeriodSeconds": grace}}
    objs = helm_offline.render(values=values)
    (deployment,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])

    assert pod["terminationGracePeriodSeconds"] == (30 if grace is None else grace)
    assert args.shutdown_grace == pod["terminationGracePeriodSeconds"]
    assert "lifecycle" not in container  # no preStop hook spending the grace behind the gateway's back
    delay = args.shutdown_delay if args.shutdown_delay is not None else IN_CLUSTER_SHUTDOWN_DELAY
    plan = ShutdownPlan.of(args.shutdown_grace, delay)
    assert plan.close_end < pod["terminationGracePeriodSeconds"]
