# libFuzzer harnesses (fuzz/README.md), included by the top Makefile.
#
#   make fuzz            build every harness under build/fuzz/ and run each
#                        for FUZZ_SECONDS (default 30) over a copy of its
#                        seed corpus; fails on any crash or sanitizer report
#   make fuzz-build      build only
#
# A harness NAME is fuzz/NAME.c (it defines LLVMFuzzerTestOneInput), its
# seeds in fuzz/corpus/NAME/ and two lines here:
#
#   FUZZ_HARNESSES += NAME
#   fuzz_NAME_SRCS := fuzz/NAME.c other.c ...
#
# (and fuzz_NAME_LDFLAGS if it needs some).
#
# Module code links against nginx's own objects: a pristine nginx tree of
# Debian's version (stack/nginx-source) configured once under
# build/fuzz/nginx with this module built in, all instrumented; put
# $(FUZZ_NGX_LIB) and fuzz/ngx_fuzz.c in the sources.  Agent code lists
# the agent files it needs ($(FUZZ_AGENT) is all of them but main.c).

FUZZ_CC        ?= clang
FUZZ_SECONDS   ?= 30
FUZZ_BUILD     := $(BUILD)/fuzz
FUZZ_SANITIZE  := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS    := -g -O1 -fno-omit-frame-pointer $(FUZZ_SANITIZE)
FUZZ_CFLAGS_CC := $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link
FUZZ_WARN      := -Wall -Wextra -Wno-unused-parameter -Werror
FUZZ_LDFLAGS   := $(FUZZ_SANITIZE) -fsanitize=fuzzer
FUZZ_LDLIBS    := -lpq -lyajl -lssl -lcrypto -lcrypt

FUZZ_NGX       := $(FUZZ_BUILD)/nginx
FUZZ_NGX_LIB   := $(FUZZ_BUILD)/libngx.a
# the nginx tree (a link to where stack/nginx-source unpacked it)
FUZZ_NGX_SRC   := $(FUZZ_NGX)/tree
FUZZ_NGX_INCS   = -I $(FUZZ_NGX_SRC)/src/core -I $(FUZZ_NGX_SRC)/src/event \
                  -I $(FUZZ_NGX_SRC)/src/event/modules \
                  -I $(FUZZ_NGX_SRC)/src/os/unix -I $(FUZZ_NGX_SRC)/src/http \
                  -I $(FUZZ_NGX_SRC)/src/http/modules -I $(FUZZ_NGX) \
                  -I $(CURDIR)/ngx_pushjobs_module \
                  -I $(shell pg_config --includedir 2>/dev/null \
                             || echo /usr/include/postgresql)

FUZZ_AGENT     := $(filter-out agent/main.c,$(AGENT_SRCS))


# The harnesses.

FUZZ_HARNESSES := ws auth keys session link agent_ws agent_poll \
                  agent_proto agent_config agent_whitelist privsep

fuzz_ws_SRCS              := fuzz/ws.c fuzz/ngx_fuzz.c $(FUZZ_NGX_LIB)
fuzz_auth_SRCS            := fuzz/auth.c fuzz/ngx_fuzz.c $(FUZZ_NGX_LIB)
fuzz_keys_SRCS            := fuzz/keys.c fuzz/ngx_fuzz.c $(FUZZ_NGX_LIB)
fuzz_session_SRCS         := fuzz/session.c fuzz/ngx_fuzz.c $(FUZZ_NGX_LIB)
fuzz_link_SRCS            := fuzz/link.c fuzz/ngx_fuzz.c $(FUZZ_NGX_LIB)
fuzz_agent_ws_SRCS        := fuzz/agent_ws.c fuzz/agent_fuzz.c $(FUZZ_AGENT)
fuzz_agent_poll_SRCS      := fuzz/agent_poll.c fuzz/agent_fuzz.c $(FUZZ_AGENT)
fuzz_agent_proto_SRCS     := fuzz/agent_proto.c fuzz/agent_fuzz.c \
                             $(FUZZ_AGENT)
fuzz_agent_config_SRCS    := fuzz/agent_config.c fuzz/agent_fuzz.c \
                             $(FUZZ_AGENT)
fuzz_agent_whitelist_SRCS := fuzz/agent_whitelist.c fuzz/agent_fuzz.c \
                             $(FUZZ_AGENT)
# (agent_fuzz.c: pja_agent, which the agent's files name)
fuzz_privsep_SRCS         := fuzz/privsep.c fuzz/agent_fuzz.c $(FUZZ_AGENT)

# a server's "run" never starts a process (fuzz/agent_fuzz.c)
fuzz_agent_ws_LDFLAGS     := -Wl,--wrap=pja_job_run
fuzz_agent_poll_LDFLAGS   := -Wl,--wrap=pja_job_run
fuzz_agent_proto_LDFLAGS  := -Wl,--wrap=pja_job_run

# the session's store is the harness's (fuzz/session.c)
fuzz_session_LDFLAGS      := -Wl,--wrap=ngx_pushjobs_store_presence \
                             -Wl,--wrap=ngx_pushjobs_store_input \
                             -Wl,--wrap=ngx_pushjobs_store_hello

# The shared JSON pre-check and the job body validation (common/, plain
# C): built when their files are there.
ifeq ($(words $(wildcard fuzz/json_bound.c common/json_bound.c)),2)
FUZZ_HARNESSES += json_bound
fuzz_json_bound_SRCS := fuzz/json_bound.c common/json_bound.c
endif

ifeq ($(words $(wildcard fuzz/job_body.c common/job_body.c)),2)
FUZZ_HARNESSES += job_body
fuzz_job_body_SRCS := fuzz/job_body.c common/job_body.c common/json_bound.c
endif


FUZZ_BINS := $(addprefix $(FUZZ_BUILD)/,$(FUZZ_HARNESSES))

.PHONY: fuzz fuzz-build fuzz-deps

fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	fuzz/run $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_HARNESSES)

# clang and its libFuzzer runtime (apt-get, when missing)
fuzz-deps:
	stack/install-deps fuzz

# object files: build/fuzz/obj/<path>.o
fuzz_objs = $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(filter %.c,$(1))) \
            $(filter %.a,$(1))

define fuzz_harness
$(FUZZ_BUILD)/$(1): $(call fuzz_objs,$(fuzz_$(1)_SRCS))
	$$(FUZZ_CC) $$(FUZZ_LDFLAGS) $$(fuzz_$(1)_LDFLAGS) -o $$@ $$^ \
	    $$(FUZZ_LDLIBS)
endef

$(foreach h,$(FUZZ_HARNESSES),$(eval $(call fuzz_harness,$(h))))

$(FUZZ_BUILD)/obj/agent/%.o: agent/%.c $(AGENT_HDRS) | fuzz-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS_CC) $(FUZZ_WARN) -std=c99 $(AGENT_CPPFLAGS) \
	    -I agent -I common -c -o $@ $<

$(FUZZ_BUILD)/obj/common/%.o: common/%.c | fuzz-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS_CC) $(FUZZ_WARN) -I common -c -o $@ $<

# agent harnesses: plain C like the agent
$(FUZZ_BUILD)/obj/fuzz/agent_%.o: fuzz/agent_%.c $(AGENT_HDRS) | fuzz-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS_CC) $(FUZZ_WARN) -std=c99 $(AGENT_CPPFLAGS) \
	    -I agent -I common -c -o $@ $<

# the root parent of the split agent (fuzz/privsep.c) is agent code too
$(FUZZ_BUILD)/obj/fuzz/privsep.o: fuzz/privsep.c $(AGENT_HDRS) | fuzz-deps
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS_CC) $(FUZZ_WARN) -std=c99 $(AGENT_CPPFLAGS) \
	    -I agent -I common -c -o $@ $<

# module harnesses: nginx's headers and configuration (plain C ones too)
$(FUZZ_BUILD)/obj/fuzz/%.o: fuzz/%.c fuzz/ngx_fuzz.h $(FUZZ_NGX_LIB)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS_CC) $(FUZZ_WARN) $(FUZZ_NGX_INCS) -I fuzz \
	    -I common -c -o $@ $<

# what the module does not use, not built (a shorter build)
FUZZ_NGX_WITHOUT := $(addprefix --without-http_,$(addsuffix _module, \
    rewrite gzip charset ssi userid access auth_basic mirror autoindex geo \
    map split_clients referer proxy fastcgi uwsgi scgi grpc memcached \
    limit_conn limit_req empty_gif browser upstream_hash upstream_ip_hash \
    upstream_least_conn upstream_random upstream_keepalive upstream_zone))

# nginx with the module built in, instrumented; every object but nginx.o
# (main) in one archive, from which a harness takes what it needs
# (the module's objects go with a reconfigure: a source renamed or removed
# must not leave its old object in the archive)
$(FUZZ_NGX)/Makefile: config | fuzz-deps
	@mkdir -p $(FUZZ_NGX)
	rm -rf $(FUZZ_NGX)/addon
	src=$$(stack/nginx-source $(BUILD)/src) && \
	ln -sfn $$src $(FUZZ_NGX_SRC) && cd $$src && \
	./configure --with-cc=$(FUZZ_CC) \
	    --with-cc-opt="$(FUZZ_CFLAGS_CC)" \
	    --with-ld-opt="$(FUZZ_SANITIZE)" \
	    --with-debug --with-http_ssl_module --without-pcre \
	    $(FUZZ_NGX_WITHOUT) --add-module=$(CURDIR) --builddir=$(FUZZ_NGX) \
	    > $(FUZZ_NGX)/configure.log 2>&1 || \
	    { tail -30 $(FUZZ_NGX)/configure.log; exit 1; }

$(FUZZ_NGX_LIB): $(FUZZ_NGX)/Makefile $(MODULE_SRCS)
	ln -sfn "$$(stack/nginx-source $(BUILD)/src)" $(FUZZ_NGX_SRC)
	$(MAKE) -f $(FUZZ_NGX)/Makefile -C $(FUZZ_NGX_SRC) binary
	rm -f $@
	find $(FUZZ_NGX) -name '*.o' ! -path '$(FUZZ_NGX)/src/core/nginx.o' \
	    | sort | xargs ar rcs $@
