from jmed.cli import run

run()
