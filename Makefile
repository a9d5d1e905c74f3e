# pushjobs: nginx module, agent, tests.
#
#   make                 build build/nginx/ngx_pushjobs_module.so and
#                        build/pushjobs-agent
#   make demo            install what is missing (apt-get), build, bring
#                        the local stack up, run one job, show its result
#   make test            install what is missing, build, run the tests
#                        (prove)
#   make asan            build nginx 1.22.1 with the module (static), and
#                        the agent, with ASan + UBSan under build/asan/, and
#                        run the tests against them (README, "Tests")
#   make fuzz            build the libFuzzer harnesses and run each for
#                        FUZZ_SECONDS (fuzz/README.md)
#
# The module is configured with the exact flags of the target nginx so that
# load_module accepts it.  By default that is Debian's nginx through nginx-dev
# (/usr/share/nginx/src with its conf_flags).  For another nginx tree, e.g.
# the Chef server's OpenResty bundle, give its source directory and its
# configure arguments:
#
#   make module NGINX_SRC=/path/to/nginx-1.x \
#        NGINX_CONFIGURE_ARGS="$(/path/to/sbin/nginx -V 2>&1 | sed -n 's/^configure arguments: //p')"

NGINX_SRC            ?= /usr/share/nginx/src
NGINX_CONF_FLAGS     ?= $(NGINX_SRC)/conf_flags
NGINX_CONFIGURE_ARGS ?=
# through the environment: nginx -V quotes its arguments ('...')
export NGINX_CONFIGURE_ARGS
BUILD                ?= $(CURDIR)/build
NGINX_BUILD          ?= $(BUILD)/nginx

CC                   ?= cc
AGENT_CFLAGS         ?= -std=c99 -O2 -g -Wall -Wextra -Wpointer-arith \
                        -Wshadow -Wstrict-prototypes -D_FORTIFY_SOURCE=2 \
                        -fstack-protector-strong
AGENT_CPPFLAGS       ?= -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
AGENT_LDLIBS         ?= -lyajl -lssl -lcrypto

MODULE_SRCS  := $(wildcard ngx_pushjobs_module/*.c ngx_pushjobs_module/*.h \
                          common/*.c common/*.h)
# common/: the bounded JSON pre-check, shared with the module
AGENT_SRCS   := $(wildcard agent/*.c) common/json_bound.c
AGENT_HDRS   := $(wildcard agent/*.h) common/json_bound.h

# Debian builds modules with its packaging flags plus -fPIC (nginx_mod.pm).
DPKG_CFLAGS  := $(shell dpkg-buildflags --get CFLAGS 2>/dev/null) \
                $(shell dpkg-buildflags --get CPPFLAGS 2>/dev/null)
DPKG_LDFLAGS := $(shell dpkg-buildflags --get LDFLAGS 2>/dev/null)

.PHONY: all module agent deps demo test asan asan-build clean

all: module agent

module: $(NGINX_BUILD)/ngx_pushjobs_module.so

agent: $(BUILD)/pushjobs-agent

$(NGINX_BUILD)/Makefile: config
	@mkdir -p $(NGINX_BUILD)
	cd $(NGINX_SRC) && \
	if [ -n "$$NGINX_CONFIGURE_ARGS" ]; then \
	    eval "./configure $$NGINX_CONFIGURE_ARGS \
	        --add-dynamic-module=$(CURDIR) --builddir=$(NGINX_BUILD)"; \
	else \
	    bash -c '. $(NGINX_CONF_FLAGS) && ./configure \
	        --with-cc-opt="$(DPKG_CFLAGS) -fPIC" \
	        --with-ld-opt="$(DPKG_LDFLAGS) -fPIC" "$${NGX_CONF_FLAGS[@]}" \
	        --add-dynamic-module=$(CURDIR) --builddir=$(NGINX_BUILD)'; \
	fi > $(NGINX_BUILD)/configure.log 2>&1 || \
	    { tail -30 $(NGINX_BUILD)/configure.log; exit 1; }

$(NGINX_BUILD)/ngx_pushjobs_module.so: $(NGINX_BUILD)/Makefile $(MODULE_SRCS)
	$(MAKE) -f $(NGINX_BUILD)/Makefile -C $(NGINX_SRC) modules

$(BUILD)/pushjobs-agent: $(AGENT_SRCS) $(AGENT_HDRS)
	@mkdir -p $(BUILD)
	$(CC) $(AGENT_CFLAGS) $(AGENT_CPPFLAGS) -Icommon -o $@ $(AGENT_SRCS) \
	    $(AGENT_LDLIBS)

# the load agent of the benchmarks (bench/README.md): make bench
.PHONY: bench
bench: $(BUILD)/pushjobs-loadagent $(BUILD)/pushjobs-flood \
       $(BUILD)/pushjobs-job-body

$(BUILD)/pushjobs-loadagent: bench/loadagent.c
	@mkdir -p $(BUILD)
	$(CC) $(AGENT_CFLAGS) -o $@ bench/loadagent.c -lssl -lcrypto

$(BUILD)/pushjobs-flood: bench/flood.c
	@mkdir -p $(BUILD)
	$(CC) $(AGENT_CFLAGS) -o $@ bench/flood.c

$(BUILD)/pushjobs-job-body: bench/job-body.c common/job_body.c \
                          common/json_bound.c
	@mkdir -p $(BUILD)
	$(CC) $(AGENT_CFLAGS) -Icommon -o $@ bench/job-body.c common/job_body.c \
	    common/json_bound.c -lyajl -lcrypto

# Debian packages for the build and the local stack (apt-get, when missing)
deps:
	stack/install-deps

demo: deps
	$(MAKE) all
	perl stack/pushjobs-stack demo

test: deps
	$(MAKE) all
	prove -I t/lib -r t/

# --- make asan ------------------------------------------------------------
#
# nginx from its pristine release tree (stack/nginx-source: Debian's orig
# tarball of the installed version) with the module linked in statically:
# a dynamic module under ASan gets a false global-buffer-overflow report on
# ngx_modules at reload.  Only the nginx modules the tests' configurations
# use are built.  clang, not gcc: its UBSan also catches arithmetic on a
# NULL pointer (NULL + 0, as in a UTF-8 check of an empty message), which
# gcc 12's does not, and writes its reports to log_path like ASan; it is
# the fuzzers' compiler too.  Alignment checks are off: nginx reads
# unaligned words on purpose on x86 (ngx_str4cmp ...).
# NGX_DEBUG_PALLOC gives every pool allocation its own heap block, so ASan
# sees overflows of pool memory too.

ASAN_CC       ?= clang
ASAN_DIR      := $(BUILD)/asan
ASAN_NGINX    := $(ASAN_DIR)/nginx/sbin/nginx
ASAN_AGENT    := $(ASAN_DIR)/pushjobs-agent
ASAN_SAN      := -fsanitize=address,undefined -fno-sanitize=alignment \
                 -fno-sanitize-recover=undefined -fno-omit-frame-pointer
ASAN_CFLAGS   := $(ASAN_SAN) -g -O1
ASAN_NGX_ONLY := -fno-sanitize=nonnull-attribute \
                 -fsanitize-ignorelist=$(CURDIR)/stack/asan-nginx.ignorelist
ASAN_NGX_ARGS := --prefix=$(ASAN_DIR)/nginx \
                 --error-log-path=stderr \
                 --http-log-path=$(ASAN_DIR)/nginx/logs/access.log \
                 --with-debug --with-http_ssl_module --with-http_v2_module \
                 --without-http_charset_module --without-http_gzip_module \
                 --without-http_ssi_module --without-http_userid_module \
                 --without-http_auth_basic_module \
                 --without-http_mirror_module --without-http_autoindex_module \
                 --without-http_geo_module --without-http_split_clients_module \
                 --without-http_referer_module --without-http_grpc_module \
                 --without-http_memcached_module \
                 --without-http_empty_gif_module --without-http_browser_module \
                 --without-http_upstream_hash_module \
                 --without-http_upstream_ip_hash_module \
                 --without-http_upstream_least_conn_module \
                 --without-http_upstream_random_module \
                 --without-http_upstream_zone_module --without-http-cache

# Sanitizer settings of the test run: any report aborts the process and
# lands in a file PushJobs::Stack reads (it sets log_path per stack).
# Leaks are checked when a process exits normally (a process killed by a
# signal is not checked); what is kept until exit on purpose is listed in
# stack/lsan.supp.
ASAN_OPTIONS  ?= abort_on_error=1:halt_on_error=1:detect_leaks=1
UBSAN_OPTIONS ?= abort_on_error=1:halt_on_error=1:print_stacktrace=1
LSAN_OPTIONS  ?= suppressions=$(CURDIR)/stack/lsan.supp:print_suppressions=0
ASAN_TESTS    ?= t/

asan-build: $(ASAN_NGINX) $(ASAN_AGENT)

$(ASAN_DIR)/nginx/Makefile: config stack/asan-nginx.ignorelist
	@mkdir -p $(ASAN_DIR)/nginx
	src=$$(stack/nginx-source $(BUILD)/src) && cd "$$src" && \
	./configure $(ASAN_NGX_ARGS) --with-cc=$(ASAN_CC) --with-cc-opt="$(ASAN_CFLAGS) \
	    $(ASAN_NGX_ONLY) -DNGX_DEBUG_PALLOC=1" --with-ld-opt="$(ASAN_SAN)" \
	    --add-module=$(CURDIR) --builddir=$(ASAN_DIR)/nginx/objs \
	    > $(ASAN_DIR)/nginx/configure.log 2>&1 || \
	    { tail -30 $(ASAN_DIR)/nginx/configure.log; exit 1; }
	cp $(ASAN_DIR)/nginx/objs/Makefile $@

# nginx's core passes NULL with a length of 0 to memcpy() all along
# (ngx_pstrdup of an empty string at every start), and its HTTP/2 body
# reader adds 0 to a NULL pointer (stack/asan-nginx.ignorelist): its
# objects are built without those checks, the module's objects (first)
# with them.
$(ASAN_NGINX): $(ASAN_DIR)/nginx/Makefile $(MODULE_SRCS)
	src=$$(stack/nginx-source $(BUILD)/src) && \
	mk=$(ASAN_DIR)/nginx/objs/Makefile && \
	$(MAKE) -f $$mk -C "$$src" \
	    CFLAGS="$$(sed -n 's/^CFLAGS = //p' $$mk \
	               | sed 's| $(ASAN_NGX_ONLY)||')" \
	    $$(grep -o '^[^ :]*/objs/addon/[^ :]*\.o' $$mk | sort -u) && \
	$(MAKE) -f $$mk -C "$$src" binary
	@mkdir -p $(ASAN_DIR)/nginx/sbin
	cp $(ASAN_DIR)/nginx/objs/nginx $@

$(ASAN_AGENT): $(AGENT_SRCS) $(AGENT_HDRS)
	@mkdir -p $(ASAN_DIR)
	$(ASAN_CC) $(ASAN_CFLAGS) -std=c99 -Wall -Wextra $(AGENT_CPPFLAGS) \
	    -Icommon -o $@ $(AGENT_SRCS) $(AGENT_LDLIBS)

# The tests against the sanitized builds; t/addon.t and t/packages.t test
# Debian's nginx with the dynamic module (pushjobs-ctl, the .deb) and keep
# using them, so make all comes first.
asan: deps
	$(MAKE) all asan-build
	PUSHJOBS_NGINX=$(ASAN_NGINX) PUSHJOBS_MODULE=static \
	PUSHJOBS_AGENT=$(ASAN_AGENT) PUSHJOBS_SANITIZED=1 \
	ASAN_OPTIONS=$(ASAN_OPTIONS) UBSAN_OPTIONS=$(UBSAN_OPTIONS) \
	LSAN_OPTIONS=$(LSAN_OPTIONS) \
	prove -I t/lib -r $(ASAN_TESTS)

include fuzz/fuzz.mk

clean:
	rm -rf $(BUILD)
