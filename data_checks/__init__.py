"""The declarative Great Expectations suites of `jmed validate`: one JSON file per suite
(questions.json, instructions.json), read by `jmed.checks.load_suite`.

A package only so that the suites ship in the wheel beside `jmed` and are found the same way from a
source checkout, an editable install and an installed wheel (`importlib.resources.files("data_checks")`).
"""
