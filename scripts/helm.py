"""Drives real Helm (the helm-sdkpy package) for Patchloop's chart tests.

Run through scripts/helm.sh, which provides the virtualenv. Every command
prints one JSON document on stdout and exits 1 with the error on stderr.

  helm.py lint CHART
  helm.py install RELEASE CHART --namespace NS [--values JSON] [--kubeconfig PATH]
  helm.py upgrade RELEASE CHART --namespace NS [--values JSON] [--kubeconfig PATH]
  helm.py uninstall RELEASE --namespace NS [--kubeconfig PATH]

install and upgrade do not wait for readiness (a test control plane has no
kubelet) and print the release, whose "manifest" is the rendered chart.
"""

import argparse
import asyncio
import json
import sys

import helm_sdkpy as helm


def config(args):
    return helm.Configuration(namespace=args.namespace, kubeconfig=args.kubeconfig)


async def main(argv):
    p = argparse.ArgumentParser(prog="helm.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    lint = sub.add_parser("lint")
    lint.add_argument("chart")
    for name in ("install", "upgrade"):
        s = sub.add_parser(name)
        s.add_argument("release")
        s.add_argument("chart")
        s.add_argument("--values", default="{}")
    un = sub.add_parser("uninstall")
    un.add_argument("release")
    for s in sub.choices.values():
        s.add_argument("--namespace", default="default")
        s.add_argument("--kubeconfig")
    args = p.parse_args(argv)

    if args.cmd == "lint":
        result = await helm.Lint(helm.Configuration(namespace=args.namespace)).run(args.chart)
    elif args.cmd == "install":
        result = await helm.Install(config(args)).run(
            args.release, args.chart, values=json.loads(args.values), wait=False
        )
    elif args.cmd == "upgrade":
        result = await helm.Upgrade(config(args)).run(
            args.release, args.chart, values=json.loads(args.values), wait=False
        )
    else:
        result = await helm.Uninstall(config(args)).run(args.release, wait=False)
    json.dump(result, sys.stdout, default=str)
    print()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except helm.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        sys.exit(1)
