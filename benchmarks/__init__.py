"""pytest-benchmark suites of gaea_ext (a package so its conftest does not clash with tests/)."""
