# A package, so this folder's conftest.py is imported as `service.conftest`: as a second top-level
# `conftest` it would replace tests/conftest.py in sys.modules, and `from conftest import ...` in
# the test folders collected after this one would then find the wrong module.
