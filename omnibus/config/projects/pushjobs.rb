#
# The Chef server add-on package: /opt/pushjobs with
#   bin/pushjobs-ctl
#   embedded/lib/nginx/modules/ngx_pushjobs_module.so (+ .nginx-V)
#   embedded/share/migrations (sqitch plan)
# Build it on a host with the target Chef Infra Server package installed
# (its nginx -V, libpq, libcrypto and yajl are what the module links), one
# package per supported Chef server version.
#

name "pushjobs"
maintainer "pushjobs developers <dev@pushjobs.invalid>"
homepage "https://github.com/pushjobs/pushjobs"
license "Apache-2.0"
license_file "LICENSE"

install_dir "/opt/pushjobs"
build_version "0.1.0"
build_iteration 1

dependency "pushjobs-module"
dependency "pushjobs-ctl"

exclude "**/.git"
