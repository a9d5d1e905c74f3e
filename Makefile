# pushjobs: nginx module, agent, tests.
#
#   make                 build build/nginx/ngx_pushjobs_module.so and
#                        build/pushjobs-agent
#   make demo            install what is missing (apt-get), build, bring
#                        the local stack up, run one job, show its result
#   make test            install what is missing, build, run the tests
#                        (prove)
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

MODULE_SRCS  := $(wildcard ngx_pushjobs_module/*.c ngx_pushjobs_module/*.h)
AGENT_SRCS   := $(wildcard agent/*.c)
AGENT_HDRS   := $(wildcard agent/*.h)

# Debian builds modules with its packaging flags plus -fPIC (nginx_mod.pm).
DPKG_CFLAGS  := $(shell dpkg-buildflags --get CFLAGS 2>/dev/null) \
                $(shell dpkg-buildflags --get CPPFLAGS 2>/dev/null)
DPKG_LDFLAGS := $(shell dpkg-buildflags --get LDFLAGS 2>/dev/null)

.PHONY: all module agent deps demo test clean

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
	$(CC) $(AGENT_CFLAGS) $(AGENT_CPPFLAGS) -o $@ $(AGENT_SRCS) $(AGENT_LDLIBS)

# the load agent of the benchmarks (bench/README.md): make bench
.PHONY: bench
bench: $(BUILD)/pushjobs-loadagent

$(BUILD)/pushjobs-loadagent: bench/loadagent.c
	@mkdir -p $(BUILD)
	$(CC) $(AGENT_CFLAGS) -o $@ bench/loadagent.c -lssl -lcrypto

# Debian packages for the build and the local stack (apt-get, when missing)
deps:
	stack/install-deps

demo: deps
	$(MAKE) all
	perl stack/pushjobs-stack demo

test: deps
	$(MAKE) all
	prove -I t/lib -r t/

include fuzz/fuzz.mk

clean:
	rm -rf $(BUILD)
