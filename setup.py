"""Package layout only (metadata lives in pyproject.toml).

The Hydra config tree stays at the repository's top level (``conf/``) and is mapped into the
package as ``ssr.conf`` when a wheel is built, so an installed ``ssr`` finds its configs without a
checkout. Every directory of ``conf/`` becomes a (data-only) package so new config groups ship
without editing this file.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

CONF = Path("conf")
conf_packages = ["ssr.conf"] + [
    "ssr.conf." + ".".join(d.relative_to(CONF).parts) for d in sorted(CONF.rglob("*")) if d.is_dir()
]

setup(
    packages=find_namespace_packages("src") + conf_packages,
    package_dir={"": "src", "ssr.conf": "conf"},
    package_data={
        "ssr": ["**/*.yaml", "**/*.json", "**/*.jsonl", "**/*.txt", "**/*.cpp"],
        "ssr.conf": ["**/*.yaml"],
    },
)
