#!/usr/bin/env ruby
# frozen_string_literal: true
#
# chef-signer.rb -- request-signing co-process for the Perl test harness.
#
# Signs requests with Chef's own signer (Mixlib::Authentication, Debian
# package ruby-mixlib-authentication), exactly as a Chef client does.
#
# Protocol: one JSON object per line on stdin, one JSON object per line on
# stdout (flushed after each), until EOF.
#
#   {"op":"sign","key_file":"/path.pem","user":"alice","method":"GET",
#    "path":"/organizations/demo/pushy/jobs","body":"...",
#    "version":"1.0"|"1.1"|"1.3",            (default "1.1", Chef's default)
#    "timestamp":"2026-01-01T00:00:00Z",     (optional; default now)
#    "api_version":"1"}                       (optional)
#   -> {"headers":{"X-Ops-Sign":..,"X-Ops-UserId":..,"X-Ops-Timestamp":..,
#                  "X-Ops-Content-Hash":..,"X-Ops-Authorization-1":..,...
#                  ["X-Ops-Server-API-Version":..]}}
#
#   {"op":"ping"} -> {"ok":true}
#
# "key" may be given instead of "key_file" (PEM text). The path may include a
# query string; it is dropped before signing (as Chef does). Any error ->
# {"error":"message"}; the process never exits on bad input.

require "openssl"
require "json"
require "time"
require "mixlib/authentication"
require "mixlib/authentication/signedheaderauth"

$stdout.sync = true

KEY_CACHE = {}

def load_key(req)
  if req["key"].is_a?(String) && !req["key"].empty?
    return KEY_CACHE[[:pem, req["key"]]] ||= OpenSSL::PKey::RSA.new(req["key"])
  end
  file = req["key_file"]
  raise ArgumentError, "key_file is required" unless file.is_a?(String) && !file.empty?
  st = File.stat(file)
  ck = [file, st.mtime.to_f, st.size]
  KEY_CACHE[ck] ||= OpenSSL::PKey::RSA.new(File.read(file))
end

def str_field(req, name, required: true)
  v = req[name]
  if v.nil?
    raise ArgumentError, "#{name} is required" if required
    return nil
  end
  raise ArgumentError, "#{name} must be a string" unless v.is_a?(String) || v.is_a?(Numeric)
  v.to_s
end

def sign(req)
  key = load_key(req)
  user = str_field(req, "user")
  meth = str_field(req, "method", required: false) || "GET"
  path = str_field(req, "path").split("?", 2)[0]
  body = str_field(req, "body", required: false) || ""
  version = str_field(req, "version", required: false) || "1.1"
  ts = str_field(req, "timestamp", required: false) || Time.now.utc.iso8601
  api = str_field(req, "api_version", required: false)

  extra = {}
  extra["X-Ops-Server-API-Version"] = api if api

  obj = Mixlib::Authentication::SignedHeaderAuth.signing_object(
    http_method: meth.upcase,
    path: path,
    body: body,
    timestamp: ts,
    user_id: user,
    proto_version: version,
    headers: extra
  )
  signed = obj.sign(key)
  headers = {}
  signed.each do |k, v|
    # mixlib spells it "X-Ops-Userid"; header names are case-insensitive.
    headers[k == "X-Ops-Userid" ? "X-Ops-UserId" : k] = v
  end
  headers.merge!(extra)
  { "headers" => headers }
end

$stdin.each_line do |line|
  line = line.strip
  next if line.empty?
  out = begin
    req = JSON.parse(line)
    raise ArgumentError, "request must be a JSON object" unless req.is_a?(Hash)
    case req["op"]
    when "sign" then sign(req)
    when "ping" then { "ok" => true }
    else raise ArgumentError, "unknown op #{req['op'].inspect}"
    end
  rescue Exception => e # rubocop:disable Lint/RescueException -- never die on bad input
    raise if e.is_a?(Interrupt) || e.is_a?(SystemExit)
    { "error" => "#{e.class}: #{e.message}" }
  end
  $stdout.puts(JSON.generate(out))
  $stdout.flush
end
