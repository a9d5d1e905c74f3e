# client.rb
log_level        :info
log_location     STDOUT
chef_server_url  "https://chef.example.com/organizations/acme"
validation_client_name "acme-validator"
node_name "node1.example.com"
client_key '/etc/chef/client.pem'
ssl_verify_mode :verify_none
trusted_certs_dir "/etc/chef/trusted_certs"
file_cache_path "/var/chef/cache"
Mixlib::Log::Formatter.show_time = true
