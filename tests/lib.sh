# Shell helpers the scripts under tests/ share; source it, do not run it.

say() { printf '==> %s\n' "$*" >&2; }

# apt_install <package>...: installs Debian packages as root, or says what is missing.
apt_install() {
  if [ "$(id -u)" -eq 0 ]; then
    say "installing Debian packages: $*"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "missing: $* (install them, e.g. sudo apt-get install $*)" >&2
    exit 1
  fi
}
