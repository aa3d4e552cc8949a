# ~/.profile on an emulated board (bound over this machine's), as Debian ships it for root.
if [ "$BASH" ]; then
  if [ -f ~/.bashrc ]; then
    . ~/.bashrc
  fi
fi
mesg n 2> /dev/null || true
