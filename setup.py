"""The package's one C extension (the rest of the build is in pyproject.toml): the push feed's
and native streams' fan-out frames (``wire/_wsframes.c``). Optional: where no compiler builds
it, its Python twin in ``wire/wsframes.py`` runs."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "streamgauge.wire._wsframes",
            ["src/streamgauge/wire/_wsframes.c"],
            optional=True,
        )
    ]
)
