from toolchain.cli.app import run

run()
