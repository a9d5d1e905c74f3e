#!/usr/bin/env ruby
# frozen_string_literal: true
#
# ===========================================================================
#  TEST STAND-IN FOR THE CHEF INFRA SERVER API (erchef).
#  THIS IS NOT A CHEF SERVER.
# ===========================================================================
#
# Chef Infra Server cannot be installed in this build/test environment, so the
# local stack runs this small in-memory imitation of the handful of erchef
# endpoints that pushjobs (the nginx module) and knife-push consume:
#
#   GET  /organizations/ORG/principals/NAME        (unauthenticated, API v0/v1)
#   GET  /organizations/ORG
#   GET/POST            /organizations/ORG/groups
#   GET/PUT/DELETE      /organizations/ORG/groups/GROUP
#   GET/POST            /organizations/ORG/clients
#   GET/PUT/DELETE      /organizations/ORG/clients/NAME
#   GET                 /organizations/ORG/users[/NAME]
#   GET/POST            /organizations/ORG/nodes
#   GET/PUT/DELETE      /organizations/ORG/nodes/NAME
#   GET                 /organizations/ORG/search
#   GET/POST            /organizations/ORG/search/node?q=...   (POST = partial search)
#   GET                 /organizations, /users, /users/NAME, /_status
#
# Request-signature verification is done by Chef's own code
# (Mixlib::Authentication::SignatureVerification from the Debian package
# ruby-mixlib-authentication); everything else (data model, search, authz) is
# a deliberately small approximation good enough for the test suite.
# State is loaded from a JSON fixture and kept in memory for the process life.
#
# Usage:
#   ruby stack/chef-api-standin.rb --listen 127.0.0.1 --port PORT \
#        --fixture FIXTURE.json [--log FILE] [--pid FILE] [--skew SECONDS] \
#        [--fault FILE]
#
# Fault modes, for the outage tests: with --fault FILE, every request first
# reads FILE (absent or "ok": normal).  "hang": the request is read and never
# answered while the file says so; "error": every request answers 500;
# "garbage": every request answers 200 with a body that is not JSON;
# "notfound": every request answers 404 with a body that is not JSON.
# (A Chef API that is down is this process stopped: t/lib/PushJobs/Stack.pm
# chef_fault("down").)  Everything else is as strict as without a fault.
#
# Prints "ready PORT" on stdout once listening (PORT 0 = pick a free port).
# Exits cleanly on TERM/INT.

require "openssl"
require "json"
require "optparse"
require "digest"
require "cgi"
require "time"
require "securerandom"
require "webrick"
require "mixlib/authentication"
require "mixlib/authentication/signatureverification"

module ChefApiStandin
  API_MIN = 0
  API_MAX = 1

  class HttpError < StandardError
    attr_reader :status, :body
    def initialize(status, body)
      @status = status
      @body = body
      super("HTTP #{status}")
    end
  end

  # Minimal request object in the shape Mixlib::Authentication expects
  # (method, path, env with HTTP_* keys, params, raw_post).
  AuthRequest = Struct.new(:method, :path, :env, :params, :raw_post)

  # ---------------------------------------------------------------------
  # Search query language (small Lucene/Solr subset)
  # ---------------------------------------------------------------------
  class Query
    class ParseError < StandardError; end

    Term = Struct.new(:field, :regex)

    def self.parse(str)
      new(str).parse
    end

    def initialize(str)
      @tokens = tokenize(str.to_s)
      @pos = 0
    end

    def parse
      raise ParseError, "empty query" if @tokens.empty?
      ast = parse_or
      raise ParseError, "unexpected token #{@tokens[@pos].inspect}" if @pos < @tokens.size
      ast
    end

    private

    def tokenize(s)
      toks = []
      i = 0
      while i < s.length
        c = s[i]
        if c =~ /\s/
          i += 1
        elsif c == "("
          toks << [:lparen]; i += 1
        elsif c == ")"
          toks << [:rparen]; i += 1
        elsif s[i, 2] == "&&"
          toks << [:and]; i += 2
        elsif s[i, 2] == "||"
          toks << [:or]; i += 2
        elsif (c == "-" || c == "!") && i + 1 < s.length && s[i + 1] !~ /\s/
          toks << [:not]; i += 1
        elsif c == "+" && i + 1 < s.length && s[i + 1] !~ /\s/
          i += 1 # "required" marker: treat as plain term
        else
          term, i = read_term(s, i)
          toks << term
        end
      end
      toks
    end

    # Reads field:value (or bare value). Builds an anchored regex for the
    # value: unescaped * and ? are wildcards, backslash escapes a character,
    # "..." quotes a literal.
    def read_term(s, i)
      field = nil
      raw = +""       # text as written (for keyword detection)
      rx = +""        # regex under construction for the current part
      in_quote = false
      while i < s.length
        c = s[i]
        if in_quote
          if c == "\\" && i + 1 < s.length
            rx << Regexp.escape(s[i + 1]); raw << s[i + 1]; i += 2; next
          elsif c == '"'
            in_quote = false; i += 1; next
          else
            rx << Regexp.escape(c); raw << c; i += 1; next
          end
        end
        break if c =~ /\s/ || c == ")" || c == "("
        if c == "\\" && i + 1 < s.length
          rx << Regexp.escape(s[i + 1]); raw << "\\" << s[i + 1]; i += 2
        elsif c == '"'
          in_quote = true; i += 1
        elsif c == ":" && field.nil?
          field = raw.gsub(/\\(.)/, '\1')
          raw = +""; rx = +""; i += 1
        elsif c == "*"
          rx << ".*"; raw << c; i += 1
        elsif c == "?"
          rx << "."; raw << c; i += 1
        else
          rx << Regexp.escape(c); raw << c; i += 1
        end
      end
      raise ParseError, "unterminated quote" if in_quote
      if field.nil?
        case raw
        when "AND" then return [[:and], i]
        when "OR" then return [[:or], i]
        when "NOT" then return [[:not], i]
        end
      end
      raise ParseError, "empty value for field #{field}" if field && raw.empty? && rx.empty?
      [[:term, Term.new(field, Regexp.new("\\A#{rx}\\z", Regexp::MULTILINE))], i]
    end

    def peek
      @tokens[@pos]
    end

    def take(type)
      t = @tokens[@pos]
      raise ParseError, "expected #{type}, got #{t ? t[0] : 'end of query'}" unless t && t[0] == type
      @pos += 1
      t
    end

    def parse_or
      left = parse_and
      while peek && peek[0] == :or
        @pos += 1
        left = [:or, left, parse_and]
      end
      left
    end

    def parse_and
      left = parse_not
      loop do
        t = peek
        break unless t
        if t[0] == :and
          @pos += 1
          left = [:and, left, parse_not]
        elsif %i{term lparen not}.include?(t[0])
          left = [:and, left, parse_not] # implicit AND
        else
          break
        end
      end
      left
    end

    def parse_not
      t = peek
      raise ParseError, "unexpected end of query" unless t
      case t[0]
      when :not
        @pos += 1
        [:not, parse_not]
      when :lparen
        @pos += 1
        e = parse_or
        take(:rparen)
        e
      when :term
        @pos += 1
        t
      else
        raise ParseError, "unexpected #{t[0]}"
      end
    end
  end

  # ---------------------------------------------------------------------
  # The server
  # ---------------------------------------------------------------------
  class Server
    attr_reader :lock

    def initialize(fixture, log_io, skew, fault_file = nil)
      @lock = Mutex.new
      @log = log_io
      @skew = skew
      @fault_file = fault_file
      load_fixture(fixture)
    end

    def fault_mode
      return "ok" unless @fault_file
      File.read(@fault_file).strip
    rescue Errno::ENOENT
      "ok"
    end

    # The fault the mode file asks for: true when it answered the request.
    def fault(req, res)
      mode = fault_mode
      case mode
      when "ok", ""
        return false
      when "hang"
        log("FAULT hang #{req.request_method} #{req.unparsed_uri}")
        sleep 0.05 while fault_mode == "hang"
        return false
      when "error"
        res.status = 500
        res["Content-Type"] = "application/json"
        res.body = JSON.generate("error" => ["stand-in fault: error"])
      when "garbage"
        res.status = 200
        res["Content-Type"] = "text/html"
        res.body = "<html><body>502 Bad Gateway, or so</body></html>"
      when "notfound"
        res.status = 404
        res["Content-Type"] = "text/html"
        res.body = "<html><body>404 Not Found</body></html>"
      else
        raise "unknown fault mode #{mode.inspect}"
      end
      log("FAULT #{mode} #{req.request_method} #{req.unparsed_uri} #{res.status}")
      true
    end

    def log(msg)
      return unless @log
      @log.puts("#{Time.now.utc.iso8601} #{msg}")
      @log.flush
    rescue StandardError
      nil
    end

    # ---------------- fixture / state ----------------

    def load_fixture(f)
      @users = {}
      (f["users"] || {}).each do |name, u|
        u ||= {}
        @users[name] = {
          "public_key" => u["public_key"],
          "superuser" => u["superuser"] ? true : (name == "pivotal" && !u.key?("superuser")),
          "display_name" => u["display_name"] || name,
          "email" => u["email"] || "#{name}@example.test",
          "first_name" => u["first_name"] || name,
          "last_name" => u["last_name"] || name,
        }
      end
      @orgs = {}
      (f["organizations"] || {}).each do |oname, o|
        o ||= {}
        org = {
          "full_name" => o["full_name"] || oname,
          "guid" => o["guid"] || Digest::MD5.hexdigest("org/#{oname}"),
          "users" => Array(o["users"]).dup,
          "clients" => {},
          "groups" => {},
          "nodes" => {},
        }
        (o["clients"] || {}).each do |cn, c|
          c ||= {}
          org["clients"][cn] = { "public_key" => c["public_key"], "validator" => c["validator"] ? true : false }
        end
        (o["groups"] || {}).each do |gn, g|
          org["groups"][gn] = normalize_group(g || {})
        end
        (o["nodes"] || {}).each do |nn, n|
          org["nodes"][nn] = normalize_node(nn, n || {})
        end
        @orgs[oname] = org
      end
    end

    def normalize_group(g)
      actors = g["actors"].is_a?(Hash) ? g["actors"] : g
      {
        "users" => Array(actors["users"]).map(&:to_s).uniq,
        "clients" => Array(actors["clients"]).map(&:to_s).uniq,
        "groups" => Array(actors["groups"]).map(&:to_s).uniq,
      }
    end

    def normalize_node(name, n)
      {
        "name" => name,
        "chef_environment" => n["chef_environment"] || "_default",
        "json_class" => "Chef::Node",
        "chef_type" => "node",
        "run_list" => Array(n["run_list"]),
        "automatic" => n["automatic"] || {},
        "normal" => n["normal"] || {},
        "default" => n["default"] || {},
        "override" => n["override"] || {},
      }.tap do |h|
        h["policy_name"] = n["policy_name"] if n.key?("policy_name")
        h["policy_group"] = n["policy_group"] if n.key?("policy_group")
      end
    end

    def authz_id(type, name)
      Digest::MD5.hexdigest("#{type}/#{name}")
    end

    # ---------------- request entry point ----------------

    def handle(req, res)
      return if fault(req, res)

      status = 500
      requestor = "-"
      body = nil
      api = 0
      begin
        api = api_version(req)
        raw_path = req.unparsed_uri.to_s.split("?", 2)[0]
        raw_path = URI(raw_path).path if raw_path =~ %r{\Ahttps?://}i
        path = CGI.unescape(raw_path.gsub("+", "%2B"))
        segs = path.split("/").reject(&:empty?)
        status, body, extra_headers, requestor = @lock.synchronize { route(req, raw_path, segs, api) }
        (extra_headers || {}).each { |k, v| res[k] = v }
      rescue HttpError => e
        status = e.status
        body = e.body
      rescue StandardError => e
        status = 500
        body = { "error" => ["internal stand-in error: #{e.class}: #{e.message}"] }
        log("ERROR #{e.class}: #{e.message} #{e.backtrace&.first(5)&.join(' | ')}")
      end
      res.status = status
      res["Content-Type"] = "application/json"
      res["X-Ops-Server-API-Version"] = JSON.generate(
        "min_version" => API_MIN.to_s, "max_version" => API_MAX.to_s,
        "request_version" => api.to_s, "response_version" => api.to_s
      )
      res.body = body.nil? ? "" : JSON.generate(body)
      log("#{req.peeraddr&.[](3)} #{req.request_method} #{req.unparsed_uri} #{status} requestor=#{requestor} api=#{api}")
    end

    def api_version(req)
      v = req["x-ops-server-api-version"]
      return 0 if v.nil? || v.strip.empty?
      unless v.strip =~ /\A-?\d+\z/ && (API_MIN..API_MAX).cover?(v.to_i)
        raise HttpError.new(406, {
          "error" => "invalid-x-ops-server-api-version",
          "message" => "Specified version #{v.strip} not supported",
          "min_version" => API_MIN, "max_version" => API_MAX,
        })
      end
      v.to_i
    end

    def not_found!
      raise HttpError.new(404, { "error" => ["not found"] })
    end

    def method_not_allowed!(allowed)
      raise HttpError.new(405, { "error" => ["Method not allowed; allowed: #{allowed.join(', ')}"] })
    end

    def allow!(req, *methods)
      m = req.request_method
      m = "GET" if m == "HEAD"
      method_not_allowed!(methods) unless methods.include?(m)
      m
    end

    def json_body(req)
      txt = req.body.to_s
      raise HttpError.new(400, { "error" => ["Missing request body"] }) if txt.strip.empty?
      v = JSON.parse(txt)
      raise HttpError.new(400, { "error" => ["Request body must be a JSON object"] }) unless v.is_a?(Hash)
      v
    rescue JSON::ParserError => e
      raise HttpError.new(400, { "error" => ["Invalid JSON: #{e.message.lines.first&.strip}"] })
    end

    def base_url(req)
      host = req["host"] || "#{req.addr[3]}:#{req.addr[1]}"
      "http://#{host}"
    end

    # Returns [status, body, headers, requestor_name]
    def route(req, raw_path, segs, api)
      base = base_url(req)
      case segs[0]
      when "_status"
        allow!(req, "GET")
        return [200, { "status" => "pong", "standin" => "chef-api-standin (TEST STAND-IN, not a Chef server)" }, nil, "-"]
      when "users"
        who = authenticate!(req, raw_path, nil)
        return route_users(req, segs[1..], who, base) + [who[:name]]
      when "organizations"
        if segs.size == 1
          allow!(req, "GET")
          who = authenticate!(req, raw_path, nil)
          forbid!(who) unless who[:superuser]
          return [200, @orgs.keys.sort.to_h { |o| [o, "#{base}/organizations/#{o}"] }, nil, who[:name]]
        end
        oname = segs[1]
        # principals: unauthenticated, checked before anything else
        if segs[2] == "principals"
          not_found! unless segs.size == 4
          allow!(req, "GET")
          return principals(oname, segs[3], api) + ["-"]
        end
        org = @orgs[oname]
        who = authenticate!(req, raw_path, org ? oname : nil)
        unless org
          raise HttpError.new(404, { "error" => ["organization '#{oname}' does not exist."] })
        end
        check_org_access!(who, oname, org)
        return route_org(req, oname, org, segs[2..], who, base) + [who[:name]]
      end
      not_found!
    end

    # ---------------- principals (unauthenticated) ----------------

    def principals(oname, name, api)
      org = @orgs[oname]
      unless org
        return [404, { "not_found" => "org", "error" => "Cannot find org #{oname}" }, nil]
      end
      list = []
      user = @users[name]
      client = org["clients"][name]
      member = user && org["users"].include?(name)
      user_p = user && { "name" => name, "public_key" => user["public_key"], "type" => "user",
                         "authz_id" => authz_id("user", name), "org_member" => member ? true : false }
      client_p = client && { "name" => name, "public_key" => client["public_key"], "type" => "client",
                             "authz_id" => authz_id("client", name), "org_member" => true }
      if api >= 1
        list << user_p if user_p
        list << client_p if client_p
        return [404, { "not_found" => "principal", "error" => "Cannot find principal #{name}" }, nil] if list.empty?
        [200, { "principals" => list }, nil]
      else
        p = (member ? user_p : nil) || client_p || user_p
        return [404, { "not_found" => "principal", "error" => "Cannot find principal #{name}" }, nil] unless p
        [200, p, nil]
      end
    end

    # ---------------- authentication ----------------

    def auth_fail!(name, why = "Ensure that your node_name and client key are correct.")
      raise HttpError.new(401, { "error" => ["Failed to authenticate as #{name}. #{why}"] })
    end

    # Returns {name:, type: "user"|"client", superuser:}
    def authenticate!(req, raw_path, oname)
      env = {}
      req.header.each do |k, vals|
        env["HTTP_" + k.upcase.tr("-", "_")] = Array(vals).join(",")
      end
      areq = AuthRequest.new(req.request_method, raw_path, env, {}, req.body.to_s)

      begin
        Mixlib::Authentication::HTTPAuthenticationRequest.new(areq)
      rescue Mixlib::Authentication::MissingAuthenticationHeader => e
        raise HttpError.new(400, { "error" => [e.message] })
      end
      userid = env["HTTP_X_OPS_USERID"].to_s.strip

      candidates = []
      if oname && (c = @orgs[oname]["clients"][userid])
        candidates << { name: userid, type: "client", superuser: false, key: c["public_key"] }
      end
      if (u = @users[userid])
        candidates << { name: userid, type: "user", superuser: u["superuser"], key: u["public_key"] }
      end
      auth_fail!(userid) if candidates.empty?

      last_error = nil
      clock_bad = false
      candidates.each do |cand|
        key = begin
          parse_public_key(cand[:key])
        rescue StandardError => e
          last_error = e
          next
        end
        verifier = Mixlib::Authentication::SignatureVerification.new
        begin
          ok = verifier.authenticate_user_request(areq, key, @skew)
        rescue Mixlib::Authentication::MissingAuthenticationHeader => e
          raise HttpError.new(400, { "error" => [e.message] })
        rescue Mixlib::Authentication::AuthenticationError => e
          last_error = e
          next
        end
        return cand.reject { |k, _| k == :key } if ok
        clock_bad = true if verifier.valid_signature? && !verifier.valid_timestamp?
      end
      log("auth failure for #{userid}: #{last_error&.message}") if last_error
      auth_fail!(userid, "Synchronize the clock on your host.") if clock_bad
      auth_fail!(userid)
    end

    def parse_public_key(pem)
      raise ArgumentError, "no public key" if pem.nil? || pem.strip.empty?
      if pem.include?("BEGIN CERTIFICATE")
        OpenSSL::X509::Certificate.new(pem).public_key
      else
        OpenSSL::PKey::RSA.new(pem)
      end
    end

    def forbid!(who, msg = nil)
      raise HttpError.new(403, { "error" => [msg || "User or client '#{who[:name]}' does not have access to that action on this server."] })
    end

    def check_org_access!(who, oname, org)
      return if who[:superuser]
      return if who[:type] == "client" # clients were only looked up within this org
      return if org["users"].include?(who[:name])
      forbid!(who, "'#{who[:name]}' not associated with organization '#{oname}'")
    end

    def in_group?(org, gname, who, seen = {})
      return false if seen[gname]
      seen[gname] = true
      g = org["groups"][gname]
      return false unless g
      list = who[:type] == "client" ? g["clients"] : g["users"]
      return true if list.include?(who[:name])
      g["groups"].any? { |sub| in_group?(org, sub, who, seen) }
    end

    def require_admin!(org, who)
      return if who[:superuser]
      forbid!(who) unless in_group?(org, "admins", who)
    end

    # ---------------- /users ----------------

    def user_body(name)
      u = @users[name]
      {
        "username" => name, "name" => name, "display_name" => u["display_name"],
        "email" => u["email"], "first_name" => u["first_name"], "last_name" => u["last_name"],
        "public_key" => u["public_key"],
      }
    end

    def route_users(req, rest, who, base)
      if rest.empty?
        allow!(req, "GET")
        forbid!(who) unless who[:superuser]
        return [200, @users.keys.sort.to_h { |u| [u, "#{base}/users/#{u}"] }, nil]
      end
      not_found! if rest.size != 1
      allow!(req, "GET")
      name = rest[0]
      forbid!(who) unless who[:superuser] || (who[:type] == "user" && who[:name] == name)
      raise HttpError.new(404, { "error" => ["Cannot find user #{name}"] }) unless @users[name]
      [200, user_body(name), nil]
    end

    # ---------------- /organizations/ORG/... ----------------

    def route_org(req, oname, org, rest, who, base)
      obase = "#{base}/organizations/#{oname}"
      if rest.empty?
        allow!(req, "GET")
        return [200, { "name" => oname, "full_name" => org["full_name"], "guid" => org["guid"] }, nil]
      end
      case rest[0]
      when "groups" then groups(req, org, oname, rest[1..], who, obase)
      when "clients" then clients(req, org, oname, rest[1..], who, obase)
      when "users" then org_users(req, org, rest[1..], who)
      when "nodes" then nodes(req, org, rest[1..], who, obase)
      when "search" then search(req, org, rest[1..], obase)
      else not_found!
      end
    end

    def group_body(org, oname, gname)
      g = org["groups"][gname]
      {
        "actors" => (g["users"] + g["clients"]).uniq,
        "users" => g["users"].dup,
        "clients" => g["clients"].dup,
        "groups" => g["groups"].dup,
        "orgname" => oname,
        "name" => gname,
        "groupname" => gname,
      }
    end

    def group_404(gname)
      raise HttpError.new(404, { "error" => ["Cannot load group #{gname}"] })
    end

    def valid_name!(name, what)
      unless name.is_a?(String) && name =~ /\A[A-Za-z0-9_.\-]+\z/
        raise HttpError.new(400, { "error" => ["Field '#{what}' invalid"] })
      end
    end

    def groups(req, org, oname, rest, who, obase)
      if rest.empty?
        m = allow!(req, "GET", "POST")
        if m == "GET"
          return [200, org["groups"].keys.sort.to_h { |g| [g, "#{obase}/groups/#{g}"] }, nil]
        end
        require_admin!(org, who)
        b = json_body(req)
        gname = b["groupname"] || b["id"] || b["name"]
        valid_name!(gname, "groupname")
        raise HttpError.new(409, { "error" => ["Group already exists"] }) if org["groups"].key?(gname)
        org["groups"][gname] = normalize_group(b)
        return [201, { "uri" => "#{obase}/groups/#{gname}" }, { "Location" => "#{obase}/groups/#{gname}" }]
      end
      not_found! if rest.size != 1
      gname = rest[0]
      m = allow!(req, "GET", "PUT", "DELETE")
      case m
      when "GET"
        group_404(gname) unless org["groups"].key?(gname)
        [200, group_body(org, oname, gname), nil]
      when "PUT"
        require_admin!(org, who)
        group_404(gname) unless org["groups"].key?(gname)
        b = json_body(req)
        newname = b["groupname"] || gname
        valid_name!(newname, "groupname")
        if b.key?("actors") || b.key?("users") || b.key?("clients") || b.key?("groups")
          org["groups"][gname] = normalize_group(b)
        end
        if newname != gname
          raise HttpError.new(409, { "error" => ["Group already exists"] }) if org["groups"].key?(newname)
          org["groups"][newname] = org["groups"].delete(gname)
          return [201, group_body(org, oname, newname), { "Location" => "#{obase}/groups/#{newname}" }]
        end
        [200, group_body(org, oname, gname), nil]
      when "DELETE"
        require_admin!(org, who)
        group_404(gname) unless org["groups"].key?(gname)
        body = group_body(org, oname, gname)
        org["groups"].delete(gname)
        org["groups"].each_value { |g| g["groups"].delete(gname) }
        [200, body, nil]
      end
    end

    def client_body(org, oname, name)
      c = org["clients"][name]
      {
        "name" => name, "clientname" => name, "orgname" => oname,
        "validator" => c["validator"], "json_class" => "Chef::ApiClient",
        "chef_type" => "client", "public_key" => c["public_key"],
      }
    end

    def clients(req, org, oname, rest, who, obase)
      if rest.empty?
        m = allow!(req, "GET", "POST")
        if m == "GET"
          return [200, org["clients"].keys.sort.to_h { |c| [c, "#{obase}/clients/#{c}"] }, nil]
        end
        require_admin!(org, who)
        b = json_body(req)
        name = b["name"] || b["clientname"]
        valid_name!(name, "name")
        raise HttpError.new(409, { "error" => ["Client already exists"] }) if org["clients"].key?(name)
        pub = b["public_key"]
        priv = nil
        if pub.nil? || pub.to_s.strip.empty?
          k = OpenSSL::PKey::RSA.new(2048)
          pub = k.public_key.to_pem
          priv = k.to_pem
        else
          begin
            parse_public_key(pub)
          rescue StandardError
            raise HttpError.new(400, { "error" => ["Invalid public key"] })
          end
        end
        org["clients"][name] = { "public_key" => pub, "validator" => b["validator"] ? true : false }
        if (g = org["groups"]["clients"]) && !g["clients"].include?(name)
          g["clients"] << name
        end
        out = { "uri" => "#{obase}/clients/#{name}", "name" => name,
                "chef_key" => { "name" => "default", "public_key" => pub, "expiration_date" => "infinity" } }
        if priv
          out["private_key"] = priv
          out["chef_key"]["private_key"] = priv
        end
        return [201, out, { "Location" => "#{obase}/clients/#{name}" }]
      end
      not_found! if rest.size != 1
      name = rest[0]
      m = allow!(req, "GET", "PUT", "DELETE")
      raise HttpError.new(404, { "error" => ["Cannot load client #{name}"] }) unless org["clients"].key?(name)
      case m
      when "GET"
        [200, client_body(org, oname, name), nil]
      when "PUT"
        require_admin!(org, who)
        b = json_body(req)
        c = org["clients"][name]
        c["validator"] = b["validator"] ? true : false if b.key?("validator")
        c["public_key"] = b["public_key"] if b["public_key"].is_a?(String) && !b["public_key"].empty?
        [200, client_body(org, oname, name), nil]
      when "DELETE"
        forbid!(who) unless who[:superuser] || in_group?(org, "admins", who) ||
                            (who[:type] == "client" && who[:name] == name)
        body = client_body(org, oname, name)
        org["clients"].delete(name)
        org["groups"].each_value { |g| g["clients"].delete(name) }
        [200, body, nil]
      end
    end

    def org_users(req, org, rest, who)
      allow!(req, "GET")
      if rest.empty?
        return [200, org["users"].sort.map { |u| { "user" => { "username" => u } } }, nil]
      end
      not_found! if rest.size != 1
      name = rest[0]
      unless org["users"].include?(name) && @users[name]
        raise HttpError.new(404, { "error" => ["Cannot find a user #{name} in organization"] })
      end
      [200, user_body(name), nil]
    end

    def nodes(req, org, rest, who, obase)
      if rest.empty?
        m = allow!(req, "GET", "POST")
        if m == "GET"
          return [200, org["nodes"].keys.sort.to_h { |n| [n, "#{obase}/nodes/#{n}"] }, nil]
        end
        b = json_body(req)
        name = b["name"]
        valid_name!(name, "name")
        raise HttpError.new(409, { "error" => ["Node already exists"] }) if org["nodes"].key?(name)
        org["nodes"][name] = normalize_node(name, b)
        return [201, { "uri" => "#{obase}/nodes/#{name}" }, { "Location" => "#{obase}/nodes/#{name}" }]
      end
      not_found! if rest.size != 1
      name = rest[0]
      m = allow!(req, "GET", "PUT", "DELETE")
      raise HttpError.new(404, { "error" => ["node '#{name}' not found"] }) unless org["nodes"].key?(name)
      case m
      when "GET"
        [200, org["nodes"][name], nil]
      when "PUT"
        b = json_body(req)
        if b.key?("name") && b["name"] != name
          raise HttpError.new(400, { "error" => ["Node name mismatch."] })
        end
        org["nodes"][name] = normalize_node(name, b)
        [200, org["nodes"][name], nil]
      when "DELETE"
        [200, org["nodes"].delete(name), nil]
      end
    end

    # ---------------- search ----------------

    def query_params(req)
      out = {}
      req.query_string.to_s.split("&").each do |pair|
        k, v = pair.split("=", 2)
        out[CGI.unescape(k.to_s)] = CGI.unescape(v.to_s)
      end
      out
    end

    def search(req, org, rest, obase)
      if rest.empty?
        allow!(req, "GET")
        return [200, { "node" => "#{obase}/search/node" }, nil]
      end
      not_found! if rest.size != 1
      index = rest[0]
      m = allow!(req, "GET", "POST")
      unless index == "node"
        raise HttpError.new(404, { "error" => ["I don't know how to search for #{index} data objects."] })
      end
      params = query_params(req)
      q = params["q"] || "*:*"
      # knife-push URI-escapes the query itself and Chef's search client
      # escapes it again: undo a second layer if one is visible.
      q = CGI.unescape(q.gsub("+", "%2B")) if q =~ /%[0-9A-Fa-f]{2}/
      begin
        ast = Query.parse(q)
      rescue Query::ParseError => e
        raise HttpError.new(400, { "error" => ["invalid search query: '#{q}': #{e.message}"] })
      end
      start = int_param(params["start"], 0)
      rows = int_param(params["rows"], 1000)
      matches = org["nodes"].keys.sort.select { |n| eval_query(ast, org["nodes"][n]) }
      page = matches[start, rows] || []
      if m == "POST"
        spec = json_body(req)
        out = page.map do |n|
          node = org["nodes"][n]
          data = {}
          spec.each do |k, pathv|
            data[k] = partial_value(node, Array(pathv))
          end
          { "url" => "#{obase}/nodes/#{n}", "data" => data }
        end
        [200, { "rows" => out, "start" => start, "total" => matches.size }, nil]
      else
        [200, { "rows" => page.map { |n| org["nodes"][n] }, "start" => start, "total" => matches.size }, nil]
      end
    end

    def int_param(v, dflt)
      return dflt if v.nil? || v.empty?
      raise HttpError.new(400, { "error" => ["invalid integer parameter '#{v}'"] }) unless v =~ /\A\d+\z/
      v.to_i
    end

    def deep_merge(a, b)
      a.merge(b) { |_k, x, y| x.is_a?(Hash) && y.is_a?(Hash) ? deep_merge(x, y) : y }
    end

    def merged_attrs(node)
      %w{default normal override automatic}.inject({}) { |acc, k| deep_merge(acc, node[k] || {}) }
    end

    def partial_value(node, path)
      return nil if path.empty?
      top = path[0].to_s
      cur = if %w{name chef_environment run_list chef_type json_class policy_name policy_group}.include?(top) && node.key?(top)
              node[top]
            else
              merged_attrs(node)[top]
            end
      path[1..].each do |p|
        cur = case cur
              when Hash then cur[p.to_s]
              when Array then p.to_s =~ /\A\d+\z/ ? cur[p.to_i] : nil
              end
        return nil if cur.nil?
      end
      cur
    end

    def run_list_items(node, kind)
      node["run_list"].filter_map do |item|
        item = item.to_s
        if item =~ /\A(role|recipe)\[(.*)\]\z/
          Regexp.last_match(2) if Regexp.last_match(1) == kind
        elsif kind == "recipe"
          item
        end
      end
    end

    # Flattened field index: nested keys joined with "_" (as Chef's indexer
    # does) plus each leaf key by itself.
    def flatten_into(idx, prefix, val)
      case val
      when Hash
        val.each do |k, v|
          key = prefix ? "#{prefix}_#{k}" : k.to_s
          flatten_into(idx, key, v)
          flatten_into(idx, k.to_s, v) if prefix && !v.is_a?(Hash)
        end
      when Array
        val.each { |v| flatten_into(idx, prefix, v) }
      else
        (idx[prefix] ||= []) << (val.nil? ? "" : val.to_s) if prefix
      end
    end

    def node_fields(node)
      idx = {}
      flatten_into(idx, nil, merged_attrs(node))
      auto = node["automatic"] || {}
      roles = (Array(auto["roles"]).map(&:to_s) + run_list_items(node, "role")).uniq
      recipes = (Array(auto["recipes"]).map(&:to_s) + run_list_items(node, "recipe")).uniq
      idx["name"] = [node["name"]]
      idx["chef_environment"] = [node["chef_environment"]]
      idx["role"] = roles
      idx["roles"] = roles
      idx["recipe"] = recipes
      idx["recipes"] = recipes
      idx["run_list"] = node["run_list"].map(&:to_s)
      idx["chef_type"] = ["node"]
      idx["policy_name"] = [node["policy_name"]] if node["policy_name"]
      idx["policy_group"] = [node["policy_group"]] if node["policy_group"]
      idx
    end

    def eval_query(ast, node, fields = nil)
      fields ||= node_fields(node)
      case ast[0]
      when :and then eval_query(ast[1], node, fields) && eval_query(ast[2], node, fields)
      when :or then eval_query(ast[1], node, fields) || eval_query(ast[2], node, fields)
      when :not then !eval_query(ast[1], node, fields)
      when :term
        t = ast[1]
        if t.field.nil?
          fields.values.flatten.any? { |v| t.regex.match?(v) }
        elsif t.field == "*"
          true
        else
          Array(fields[t.field]).any? { |v| t.regex.match?(v) }
        end
      end
    end
  end

  class Servlet < WEBrick::HTTPServlet::AbstractServlet
    def initialize(server, app)
      super(server)
      @app = app
    end

    def service(req, res)
      @app.handle(req, res)
    end
  end

  def self.main(argv)
    opts = { listen: "127.0.0.1", port: 0, skew: 900 }
    OptionParser.new do |o|
      o.banner = "Usage: chef-api-standin.rb --listen ADDR --port PORT --fixture FILE [--log FILE] [--pid FILE]\n" \
                 "TEST STAND-IN for the Chef Infra Server API (erchef) -- not a Chef server."
      o.on("--listen ADDR") { |v| opts[:listen] = v }
      o.on("--port PORT", Integer) { |v| opts[:port] = v }
      o.on("--fixture FILE") { |v| opts[:fixture] = v }
      o.on("--log FILE") { |v| opts[:log] = v }
      o.on("--pid FILE") { |v| opts[:pid] = v }
      o.on("--skew SECONDS", Integer, "allowed clock skew (default 900)") { |v| opts[:skew] = v }
      o.on("--fault FILE", "fault mode file: ok, hang, error, garbage or notfound") { |v| opts[:fault] = v }
    end.parse!(argv)
    abort("chef-api-standin: --fixture is required") unless opts[:fixture]

    fixture = begin
      JSON.parse(File.read(opts[:fixture]))
    rescue StandardError => e
      abort("chef-api-standin: cannot load fixture #{opts[:fixture]}: #{e.message}")
    end
    log_io = opts[:log] ? File.open(opts[:log], "a") : nil
    log_io&.sync = true
    app = Server.new(fixture, log_io, opts[:skew], opts[:fault])

    wlog = WEBrick::Log.new(log_io || File.open(File::NULL, "w"), WEBrick::Log::WARN)
    http = WEBrick::HTTPServer.new(
      BindAddress: opts[:listen], Port: opts[:port],
      Logger: wlog, AccessLog: [], DoNotReverseLookup: true
    )
    File.write(opts[:pid], "#{Process.pid}\n") if opts[:pid]
    http.mount("/", Servlet, app)
    # WEBrick writes a response's head and body separately: without
    # TCP_NODELAY (inherited by accepted sockets on Linux) Nagle's algorithm
    # and the peer's delayed ACK hold the body ~40 ms on a kept-alive
    # connection, which every request through nginx's upstream keepalive
    # would pay.
    http.listeners.each do |l|
      l.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
    end
    port = http.listeners.first.addr[1]
    %w{TERM INT}.each { |sig| trap(sig) { http.shutdown } }
    app.log("chef-api-standin (TEST STAND-IN for erchef) listening on #{opts[:listen]}:#{port} pid #{Process.pid}")
    $stdout.puts "ready #{port}"
    $stdout.flush
    http.start
    app.log("chef-api-standin stopped")
    File.delete(opts[:pid]) if opts[:pid] && File.exist?(opts[:pid])
    0
  end
end

exit(ChefApiStandin.main(ARGV)) if $PROGRAM_NAME == __FILE__
