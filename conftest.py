# Registers kconform's pytest plugin for everything under this directory (cases/ and tests/).
pytest_plugins = ["harness.plugin"]
