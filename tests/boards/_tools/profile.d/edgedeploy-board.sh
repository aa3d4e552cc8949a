# Bound over /etc/profile.d on an emulated board: /etc/profile has just reset PATH, so put the
# board's tools (bin/) first again. EDGEDEPLOY_BOARD_BIN comes from the rig (sshd SetEnv / _nsinit).
if [ -n "${EDGEDEPLOY_BOARD_BIN-}" ]; then
    PATH="$EDGEDEPLOY_BOARD_BIN:$PATH"
fi
