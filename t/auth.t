# Chef request authentication: signatures made by Chef's own signer
# (Debian's ruby-mixlib-authentication) of every version are accepted, and
# a wrong key, body, path, method or clock are refused with the 2.x
# contract's status and body; the agent's own signer is accepted.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use POSIX qw(strftime);
use Test::More;
use PushJobs::Stack;

my $stack = PushJobs::Stack->new(agents => 0);
$stack->start;

my $org = $stack->org;
my $jobs = "/organizations/$org/pushy/jobs";

for my $v (qw(1.0 1.1 1.3)) {
    my $res = $stack->request('GET', $jobs, version => $v);
    is $res->{status}, 200, "signing version $v accepted";
    is_deeply $res->{json}, [], "  and the job list is an empty JSON list";
    is $res->{headers}{'x-ops-server-api-version'} ? 1 : 0, 1,
        '  with an X-Ops-Server-API-Version header';
}

# a query string is not part of the signed path
my $res = $stack->request('GET', "$jobs?x=1", version => '1.3');
is $res->{status}, 200, 'query string ignored by the signature';

sub refused {
    my ($res, $status, $error, $name) = @_;
    is $res->{status}, $status, "$name: $status";
    is_deeply $res->{json}, { error => [$error] }, "$name: error body"
        or diag $res->{content};
}

my $bad_sig = "Invalid signature for user or client 'alice'";

for my $v (qw(1.0 1.1 1.3)) {
    $res = $stack->request('GET', $jobs, version => $v,
                           key_file => $stack->user_key('bob'));
    refused($res, 401, $bad_sig, "$v wrong key");
    like $res->{headers}{'www-authenticate'} // '', qr/X-Ops-Sign/,
        "$v wrong key: WWW-Authenticate";

    $res = $stack->request('GET', $jobs, version => $v,
                           sign_path => "/organizations/$org/pushy/node_states");
    refused($res, 401, $bad_sig, "$v wrong path");

    $res = $stack->request('GET', $jobs, version => $v, sign_method => 'PUT');
    refused($res, 401, $bad_sig, "$v wrong method");

    my $ts = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime(time - 16 * 60));
    $res = $stack->request('GET', $jobs, version => $v, timestamp => $ts);
    refused($res, 401, 'Failed to authenticate as alice. Synchronize the '
                       . 'clock on your host.', "$v clock 16 minutes off");

    # a valid job body, but not the one that was signed
    my $job = { command => 'true', nodes => ['node1'] };
    $res = $stack->request('POST', $jobs, version => $v, body => $job,
                           sign_body => '{"command":"false","nodes":["node1"]}');
    refused($res, 401, $bad_sig, "$v wrong body");
}

$res = $stack->request('GET', $jobs, unsigned => 1);
refused($res, 400, "missing required authentication header(s) "
                   . "'X-Ops-UserId', 'X-Ops-Timestamp', 'X-Ops-Sign', "
                   . "'X-Ops-Content-Hash'", 'unsigned');

$res = $stack->request('GET', $jobs, headers => { 'X-Ops-Sign' => 'version=9.9' });
refused($res, 400, 'Unsupported authentication protocol version',
        'unknown signing version');

$res = $stack->request('GET', "/organizations/nosuchorg/pushy/jobs");
refused($res, 404, "organization 'nosuchorg' does not exist.", 'unknown org');

$res = $stack->request('GET', $jobs, user => 'nobody',
                       key_file => $stack->user_key('alice'));
refused($res, 401, "Failed to authenticate as 'nobody'. Ensure that your "
                   . "node_name and client key are correct.", 'unknown user');

$res = $stack->request('GET', $jobs, user => 'carol');
refused($res, 403, "'carol' is not associated with organization '$org'",
        'user outside the org');

# a client (a node) signs with its own key
$res = $stack->request('GET', $jobs, user => 'ghost');
is $res->{status}, 200, 'a client of the org may read';
$res = $stack->request('GET', $jobs, user => 'ghost',
                       key_file => $stack->user_key('alice'));
refused($res, 401, "Invalid signature for user or client 'ghost'",
        'client with another key');

# the agent's own signer (pushjobs-agent --sign-request)
my $rb = $stack->client_rb('ghost');
for my $path ($jobs, "/organizations/$org/pushy/node_states") {
    my @lines = `$PushJobs::Stack::AGENT --sign-request GET $path -c $rb`;
    is $?, 0, 'agent signer ran';
    my %h = map { /^([^:]+):\s*(.*?)\s*$/ ? ($1 => $2) : () } @lines;
    ok $h{'X-Ops-Authorization-1'}, 'agent signer gave a signature';
    $res = $stack->http->request('GET', $stack->url . $path, {
        headers => { %h, Accept => 'application/json' } });
    is $res->{status}, 200, "agent signer accepted for $path"
        or diag $res->{content};
}

# the cached key is used the second time: still accepted, still refused
$res = $stack->request('GET', $jobs, version => '1.3');
is $res->{status}, 200, 'cached key accepted';
$res = $stack->request('GET', $jobs, key_file => $stack->user_key('bob'));
is $res->{status}, 401, 'cached key still refuses a wrong signature';

# the forms of a public key chef_authn accepts: SPKI (every key above),
# PKCS#1 and an X.509 certificate; a client with each form authenticates
# (a key that did not parse would be a 401) and a wrong signature with it
# is still refused
for my $form (qw(pkcs1 cert)) {
    my $name = "key$form";
    my ($key) = $stack->genkey($name);
    my @conv = $form eq 'pkcs1'
        ? ('openssl', 'rsa', '-in', $key, '-RSAPublicKey_out')
        : ('openssl', 'req', '-new', '-x509', '-key', $key, '-days', '2',
           '-subj', "/CN=$name");
    $stack->run_cmd(@conv, '-out', "$key.$form");
    my $pub = PushJobs::Stack::slurp("$key.$form");
    like $pub, $form eq 'pkcs1' ? qr/BEGIN RSA PUBLIC KEY/
                                : qr/BEGIN CERTIFICATE/, "$form: the key form";
    my $c = $stack->chef_request('POST', "/organizations/$org/clients",
        body => { name => $name, public_key => $pub });
    is $c->{status}, 201, "$form: client $name created"
        or diag $c->{content};
    $stack->{clients}{$name} = { key => $key, pub => $pub };
    for my $try (1, 2) {    # the second time from the key cache
        $res = $stack->request('GET', $jobs, user => $name);
        is $res->{status}, 200, "$form: $name authenticates ($try)"
            or diag $res->{content};
    }
    $res = $stack->request('GET', $jobs, user => $name,
                           key_file => $stack->user_key('bob'));
    is $res->{status}, 401, "$form: a wrong signature is refused";
}

is_deeply [ $stack->alerts ], [], 'no [alert] or [emerg] in error.log';

$stack->stop;
done_testing;
