package PushJobs::ChefSecrets;

# A Chef server's credential store, /etc/opscode/private-chef-secrets.json,
# as Chef server 12.14 and later write it: a veil version 2 file
# (chef_secrets, lib/veil/credential_collection/chef_secrets_file.rb and
# lib/veil/cipher/v2.rb):
#
#   {"veil": {"type": "Veil::CredentialCollection::ChefSecretsFile",
#             "version": 2,
#             "hasher": {"type": "Veil::Hasher::PBKDF2", "secret": hex,
#                        "salt": hex, "iterations": 10000,
#                        "hash_function": "OpenSSL::Digest::SHA512"},
#             "cipher": {"type": "Veil::Cipher::V2", "key": base64 (32 bytes),
#                        "iv": base64 (16 bytes)},
#             "credentials": base64(AES-256-CBC(JSON))}}
#
# the JSON being {group: {name: {"type": "Veil::Credential", "name",
# "group", "value", "version", "length", "frozen"}}}.  Keys, IVs and values
# are made at test time; openssl does the AES, as OpenSSL::Cipher does for
# veil.

use strict;
use warnings;

use Carp qw(croak);
use File::Temp qw(tempdir);
use JSON::PP;
use MIME::Base64 qw(encode_base64 decode_base64);

sub random_bytes {
    my ($n) = @_;
    open my $fh, '<', '/dev/urandom' or croak "/dev/urandom: $!";
    read($fh, my $b, $n) == $n or croak 'short read';
    return $b;
}

sub random_hex { unpack 'H*', random_bytes($_[0] // 16) }

sub openssl {
    my ($mode, $key, $iv, $in) = @_;
    my $d = tempdir('veil-XXXXXX', TMPDIR => 1, CLEANUP => 1);
    open my $fh, '>', "$d/in" or croak $!;
    print $fh $in;
    close $fh;
    system('openssl', 'enc', $mode, '-aes-256-cbc', '-K', unpack('H*', $key),
           '-iv', unpack('H*', $iv), '-in', "$d/in", '-out', "$d/out") == 0
        or croak "openssl enc $mode failed";
    open $fh, '<', "$d/out" or croak $!;
    local $/;
    return scalar <$fh>;
}

# Write { group => { name => value } } as a veil v2 file, mode 0600.
sub write_veil {
    my ($file, $creds) = @_;
    my %plain;
    for my $g (sort keys %$creds) {
        for my $n (sort keys %{ $creds->{$g} }) {
            my $v = $creds->{$g}{$n};
            $plain{$g}{$n} = { type => 'Veil::Credential', name => $n,
                               group => $g, value => $v, version => 0,
                               length => length $v,
                               frozen => JSON::PP::true };
        }
    }
    my ($key, $iv) = (random_bytes(32), random_bytes(16));
    my $ct = openssl('-e', $key, $iv, JSON::PP->new->encode(\%plain));
    my $doc = { veil => {
        type => 'Veil::CredentialCollection::ChefSecretsFile',
        version => 2,
        hasher => { type => 'Veil::Hasher::PBKDF2', secret => random_hex(512),
                    salt => random_hex(128), iterations => 10000,
                    hash_function => 'OpenSSL::Digest::SHA512' },
        cipher => { type => 'Veil::Cipher::V2', key => encode_base64($key, ''),
                    iv => encode_base64($iv, '') },
        credentials => encode_base64($ct, ''),
    } };
    open my $fh, '>', $file or croak "$file: $!";
    print $fh JSON::PP->new->pretty->canonical->encode($doc);
    close $fh or croak "$file: $!";
    chmod 0600, $file;
}

# Read a veil v2 file back: { group => { name => value } }.
sub read_veil {
    my ($file) = @_;
    open my $fh, '<', $file or croak "$file: $!";
    local $/;
    my $v = JSON::PP->new->decode(scalar <$fh>)->{veil}
        or croak "$file: not a veil file";
    croak "$file: cipher $v->{cipher}{type}"
        unless $v->{cipher}{type} eq 'Veil::Cipher::V2';
    my $plain = JSON::PP->new->decode(openssl(
        '-d', decode_base64($v->{cipher}{key}),
        decode_base64($v->{cipher}{iv}), decode_base64($v->{credentials})));
    my %creds;
    for my $g (keys %$plain) {
        $creds{$g}{$_} = $plain->{$g}{$_}{value} for keys %{ $plain->{$g} };
    }
    return \%creds;
}

1;
