#
# pushjobs-ctl: the reconfigure/disable/status command of the add-on, and
# the sqitch plan it deploys.  It needs perl (core modules, JSON::PP), psql
# and sqitch: the Chef server's embedded psql and sqitch are used when
# present (/opt/opscode/embedded/bin), else those on PATH.
#

name "pushjobs-ctl"
description "pushjobs-ctl and the pushjobs sqitch plan"
default_version "local_source"
license :project_license
skip_transitive_dependency_licensing true

source path: File.expand_path("../../..", __dir__),
       options: { exclude: %w{build .git obj-* debian/tmp} }

build do
  mkdir "#{install_dir}/bin"
  copy "omnibus/bin/pushjobs-ctl", "#{install_dir}/bin/pushjobs-ctl"
  command "chmod 0755 #{install_dir}/bin/pushjobs-ctl"
  mkdir "#{install_dir}/embedded/share"
  sync "migrations", "#{install_dir}/embedded/share/migrations"
end
