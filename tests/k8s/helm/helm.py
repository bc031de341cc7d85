"""The real helm binary, pointed at the test control plane, with its own state dirs.

Why a wrapper: every call needs the same kubeconfig and isolated
HELM_*_HOME directories (a developer's repositories and plugins must not leak
into tests), and failures should carry helm's stderr into the test report.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
CHART = REPO_ROOT / "charts" / "mailgate"


class HelmError(RuntimeError):
    """A helm call failed; ``stderr`` holds helm's own message."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed (exit {returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def _quiet(stderr: str) -> str:
    """helm's stderr without its INFO lines (it logs one per symlink it follows)."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("level=INFO"))


class Helm:
    """Runs ``helm`` with a fixed kubeconfig; ``kubeconfig=None`` for render-only calls."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        home.mkdir(parents=True, exist_ok=True)
        self._home = home
        self._files = 0
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"},
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """One helm command; raises HelmError (with stderr) when ``check`` and it fails."""
        argv = [str(self.binary), *args]
        if self.kubeconfig is not None:
            argv.append(f"--kubeconfig={self.kubeconfig}")
        result = subprocess.run(argv, capture_output=True, text=True, env=self._env, timeout=timeout)
        result.stderr = _quiet(result.stderr)
        if check and result.returncode != 0:
            raise HelmError(args, result.returncode, result.stderr)
        return result

    def template(
        self,
        *,
        release: str = "mg",
        namespace: str = "mailgate",
        values: Mapping[str, Any] | None = None,
        include_crds: bool = False,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``helm template`` of the chart with values given as a mapping (written as a file)."""
        args = ["template", release, str(CHART), "-n", namespace, *self._values_args(values)]
        if include_crds:
            args.append("--include-crds")
        return self.run(*args, check=check)

    def render(self, **kwargs: Any) -> list[dict[str, Any]]:
        """The rendered manifests as objects (empty documents dropped)."""
        return [doc for doc in yaml.safe_load_all(self.template(**kwargs).stdout) if doc]

    def install(
        self, release: str, namespace: str, values: Mapping[str, Any] | None = None, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``helm install`` without --wait: there is no kubelet, pods never run."""
        return self.run("install", release, str(CHART), "-n", namespace, *self._values_args(values), check=check)

    def upgrade(self, release: str, namespace: str, values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        """``helm upgrade`` with exactly these values (no reuse of the previous ones)."""
        return self.run("upgrade", release, str(CHART), "-n", namespace, *self._values_args(values))

    def uninstall(self, release: str, namespace: str) -> subprocess.CompletedProcess[str]:
        """``helm uninstall``; CRDs stay, by Helm's design."""
        return self.run("uninstall", release, "-n", namespace)

    def releases(self, namespace: str) -> list[dict[str, Any]]:
        """``helm list`` in one namespace (deployed and failed releases), parsed."""
        return json.loads(self.run("list", "-n", namespace, "-o", "json").stdout)

    def _values_args(self, values: Mapping[str, Any] | None) -> list[str]:
        """Values as one ``--values`` file: JSON is YAML, and a file keeps types exact
        (``--set`` would turn "true" or "1" into a bool or an int by its own rules)."""
        if not values:
            return []
        self._files += 1
        path = self._home / f"values-{self._files}.json"
        path.write_text(json.dumps(values))
        return ["--values", str(path)]
