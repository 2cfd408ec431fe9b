"""`podspan-operator`: runs the kopf operator over all namespaces (kubeconfig or in-cluster)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random

import kopf

from podspan_operator import handlers, kube, reconciler, telemetry

PEERING = "podspan-operator"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="podspan-operator", description=__doc__)
    parser.add_argument("--standalone", action="store_true",
                        help="do not coordinate with other replicas (by default one replica is active at a "
                             f"time, through the ClusterKopfPeering {PEERING!r})")
    parser.add_argument("--peering", default=PEERING, help="ClusterKopfPeering name")
    parser.add_argument("--priority", type=int, default=random.randint(1, 1_000_000),
                        help="peering priority: the highest-priority replica is the only active one (kopf "
                             "pauses every replica on a tie); random by default")
    parser.add_argument("--liveness", metavar="URL", help="serve a kopf liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--heartbeat-timeout", type=float, default=reconciler.Options.heartbeat_timeout,
                        help="seconds without an agent heartbeat before its node counts as not reporting")
    parser.add_argument("--metrics-port", type=int, default=telemetry.DEFAULT_PORT, metavar="PORT",
                        help=f"Prometheus endpoint for the operator's own metrics (default {telemetry.DEFAULT_PORT}; "
                             "0: any free port; -1: none)")
    # All addresses by default: Prometheus scrapes the operator's pod.
    parser.add_argument("--metrics-address", default="0.0.0.0", metavar="ADDRESS",
                        help="address the metrics endpoint listens on (default all)")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.standalone:
        try:
            asyncio.run(kube.ensure_peering(args.peering))
        except Exception as exc:  # kopf reports an unreachable API on its own, and retries
            logging.getLogger(__name__).warning("could not ensure ClusterKopfPeering %s: %s", args.peering, exc)
    metrics = telemetry.OperatorMetrics()
    if args.metrics_port >= 0:
        try:
            server, _ = metrics.serve(args.metrics_address, args.metrics_port)
        except OSError as exc:
            parser.error(f"cannot serve metrics on {args.metrics_address}:{args.metrics_port}: {exc.strerror or exc}")
        logging.getLogger(__name__).info("serving metrics at http://%s:%d/metrics", args.metrics_address,
                                         server.server_port)
    kopf.run(clusterwide=True, standalone=args.standalone, priority=args.priority,
             peering_name=None if args.standalone else args.peering,
             liveness_endpoint=args.liveness, registry=handlers.registry,
             memo=kopf.Memo(options=reconciler.Options(heartbeat_timeout=args.heartbeat_timeout), metrics=metrics))


if __name__ == "__main__":
    main()
