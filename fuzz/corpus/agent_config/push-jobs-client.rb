whitelist({
  "chef-client" => "chef-client",
  "restart" => { :command_line => "systemctl restart app", :lock => true },
  /^echo (\w+)$/ => 'echo \1',
  /^ls\s+(\S+)/i => "ls -l \\1",
})
allowed_env_vars ["PATH", "LANG"]
allow_unencrypted true
file_dir = "/tmp/pushjobs"
pushjobs_transport :long_poll
