# ~/.bashrc on an emulated board (bound over this machine's): the dev machine's own setup
# (pyenv, cargo, ...) is not the board's, and ssh runs it for every command.
