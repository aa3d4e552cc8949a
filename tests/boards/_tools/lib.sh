# Shared by the board tools. They are reached through symlinks in <board>/bin/, so $0 names the
# board; the values they report are top-level scalars of that board's board.yaml.
board_dir=$(cd "$(dirname "$0")/.." && pwd)

board_field() {  # board_field KEY: the value of "KEY: value", quotes removed
    sed -n "/^$1: */{s///;s/^'\(.*\)'\$/\1/;s/^\"\(.*\)\"\$/\1/;p;q;}" "$board_dir/board.yaml"
}
