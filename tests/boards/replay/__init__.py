"""Replay boards: emulated boards in their own network namespaces, behind a link with a real delay,
answering from a recording instead of computing (board.py; recording and labs: fleet.py).

Made for bench/lab_scale.py, so that N boards against one measures edgedeploy's own concurrency,
not this machine's cores running N boards' work. Needs root, iproute2, util-linux, openssh-server,
dash. tests/integration/test_replay_board.py checks the rig.
"""
