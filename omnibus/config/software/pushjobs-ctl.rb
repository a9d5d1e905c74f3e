#
# pushjobs-ctl: the reconfigure/disable/status command of the add-on, and
# the sqitch plan it deploys.  It needs perl (core modules: JSON::PP,
# Getopt::Long, MIME::Base64), psql, sqitch and openssl: the Chef server's
# embedded psql, sqitch and openssl are used when present
# (/opt/opscode/embedded/bin), else those on PATH.
#
# It runs under the Chef server's embedded perl (5.34 in Chef Infra Server
# 15, a full perl with every core module; its sqitch runs on it), not
# /usr/bin/perl: RHEL splits core modules into packages of their own
# (perl-JSON-PP, perl-Getopt-Long), which a minimal host lacks.
#

name "pushjobs-ctl"
description "pushjobs-ctl and the pushjobs sqitch plan"
default_version "local_source"
license "Apache-2.0"
license_file "LICENSE"
skip_transitive_dependency_licensing true

source path: File.expand_path("../../..", __dir__),
       options: { exclude: %w{build .git obj-* debian/tmp} }

build do
  mkdir "#{install_dir}/bin"
  copy "omnibus/bin/pushjobs-ctl", "#{install_dir}/bin/pushjobs-ctl"
  block "pushjobs-ctl runs under the Chef server's perl" do
    ctl = "#{install_dir}/bin/pushjobs-ctl"
    File.write(ctl, File.read(ctl).sub(%r{\A#!/usr/bin/perl},
                                       "#!/opt/opscode/embedded/bin/perl"))
  end
  command "chmod 0755 #{install_dir}/bin/pushjobs-ctl"
  mkdir "#{install_dir}/embedded/share"
  sync "migrations", "#{install_dir}/embedded/share/migrations"
  # The changes include the schema and functions as ../../sql/*.sql.
  sync "sql", "#{install_dir}/embedded/share/sql"
  # The job pages the module serves (pushjobs_ui).
  sync "ui", "#{install_dir}/embedded/share/ui"
end
