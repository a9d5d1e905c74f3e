#
# pushjobs-module: ngx_pushjobs_module.so built for the Chef Infra Server's
# embedded OpenResty.
#
# Chef's OpenResty is not configured --with-compat, so nginx accepts a
# dynamic module only if it was configured with the very same arguments on
# the very same nginx version (the module signature,
# NGX_MODULE_SIGNATURE, that nginx compares when it loads a module).  This definition therefore:
#
#   1. reads `nginx -V` of the Chef server's nginx (CHEF_SERVER_DIR,
#      default /opt/opscode: the Chef server package installed on the build
#      host, or the chef-server omnibus build this definition is part of);
#   2. finds the OpenResty source tree of that same version: the
#      "openresty" software's unpacked source in this omnibus build, or
#      PUSHJOBS_OPENRESTY_SRC (an unpacked openresty-X.Y.Z.W tarball);
#      it refuses a tree whose nginx version differs from the binary's;
#   3. runs the top-level Makefile's `make module` in that tree's
#      bundle/nginx-* directory with those exact configure arguments
#      (their --add-module=../xxx paths resolve inside bundle/), linking the
#      Chef server's own libpq (embedded pg_config) and libcrypto
#      (embedded/lib, already in the arguments' -L/-rpath) and the yajl the
#      Chef server already ships (the libyajl2 gem's vendored build);
#   4. installs the module and, next to it, the `nginx -V` it was built
#      for (ngx_pushjobs_module.so.nginx-V), which pushjobs-ctl quotes when
#      nginx -t refuses the module.
#
# A mismatch that slips through is caught at `pushjobs-ctl reconfigure`:
# nginx -t fails with `module "..." is not binary compatible` (or
# `version N instead of M`), the add-on files are rolled back and nginx
# keeps running with its previous configuration.
#

name "pushjobs-module"
description "ngx_pushjobs_module for the Chef Infra Server's OpenResty"
default_version "local_source"
license "Apache-2.0"
license_file "LICENSE"
skip_transitive_dependency_licensing true

# This repository (omnibus/config/software -> ../../..).
source path: File.expand_path("../../..", __dir__),
       options: { exclude: %w{build .git obj-* debian/tmp} }

build do
  block "build ngx_pushjobs_module against the Chef server's nginx" do
    chef = ENV["CHEF_SERVER_DIR"] || "/opt/opscode"
    nginx = "#{chef}/embedded/sbin/nginx"
    raise "pushjobs-module: no Chef server nginx at #{nginx} " \
          "(install the target chef-server package or set CHEF_SERVER_DIR)" \
          unless File.executable?(nginx)

    v = shellout!("#{nginx} -V").stderr
    nginx_version = v[%r{^nginx version: \S+/(\S+)}, 1]
    openresty = v[%r{^nginx version: openresty/(\S+)}, 1]
    args = v[/^configure arguments: (.*)$/, 1]
    raise "pushjobs-module: cannot read `#{nginx} -V`:\n#{v}" \
          unless nginx_version && args

    # The OpenResty source of the same version.
    candidates = [ENV["PUSHJOBS_OPENRESTY_SRC"],
                  openresty && File.join(Omnibus::Config.source_dir,
                                         "openresty", "openresty-#{openresty}")]
    tree = candidates.compact.find { |d| File.directory?(d) }
    raise "pushjobs-module: need the source of #{v.lines.first.strip}: " \
          "unpack openresty-#{openresty}.tar.gz and set " \
          "PUSHJOBS_OPENRESTY_SRC to it" unless tree
    ngx_src = Dir.glob("#{tree}/bundle/nginx-*").find { |d| File.directory?(d) }
    raise "pushjobs-module: no bundle/nginx-* in #{tree}" unless ngx_src
    src_version = shellout!("sed -n 's/^#define NGINX_VERSION *\"\\(.*\\)\"/\\1/p' " \
                            "#{ngx_src}/src/core/nginx.h").stdout.strip
    core_version = v[%r{^nginx version: openresty/(\d+\.\d+\.\d+)}, 1] ||
                   nginx_version
    raise "pushjobs-module: #{ngx_src} is nginx #{src_version}, " \
          "the Chef server runs #{core_version}" \
          unless src_version == core_version

    # libpq: the Chef server's PostgreSQL (embedded/postgresql/NN or
    # embedded); yajl: the libyajl2 gem's vendored library.
    pg_config = (Dir.glob("#{chef}/embedded/postgresql/*/bin/pg_config") +
                 ["#{chef}/embedded/bin/pg_config"]).find { |f| File.executable?(f) }
    raise "pushjobs-module: no embedded pg_config under #{chef}" unless pg_config
    pg_inc = shellout!("#{pg_config} --includedir").stdout.strip
    pg_lib = shellout!("#{pg_config} --libdir").stdout.strip

    yajl = Dir.glob("#{chef}/embedded/lib/ruby/gems/*/gems/libyajl2-*/lib/" \
                    "libyajl2/vendored-libyajl2").max
    raise "pushjobs-module: no libyajl2 gem under #{chef}/embedded" unless yajl

    rpath = ->(d) { "-L#{d} -Wl,-rpath,#{d}" }
    env = {
      "PUSHJOBS_INC" => "#{pg_inc} #{yajl}/include",
      "PUSHJOBS_LIBS" => "#{rpath.call(pg_lib)} -lpq " \
                         "#{rpath.call("#{yajl}/lib")} -lyajl " \
                         "#{rpath.call("#{chef}/embedded/lib")} -lcrypto",
      # ngx_lua's config looks for LuaJIT
      "LUAJIT_INC" => Dir.glob("#{chef}/embedded/luajit/include/luajit-*").max.to_s,
      "LUAJIT_LIB" => "#{chef}/embedded/luajit/lib",
    }
    build = File.join(project_dir, "build-omnibus")
    shellout!(["make", "-C", project_dir, "module",
               "NGINX_SRC=#{ngx_src}",
               "NGINX_CONFIGURE_ARGS=#{args}",
               "BUILD=#{build}"],
              env: env, timeout: 3600, live_stream: $stdout)

    dest = "#{install_dir}/embedded/lib/nginx/modules"
    FileUtils.mkdir_p(dest)
    FileUtils.install("#{build}/nginx/ngx_pushjobs_module.so", dest, mode: 0755)
    File.write("#{dest}/ngx_pushjobs_module.so.nginx-V", v)
  end
end
