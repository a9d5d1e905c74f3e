/*
 * Shared by the job pages: the link's token, authenticated reads, an
 * event feed reader (fetch + a stream reader: EventSource cannot send the
 * Authorization header), and DOM helpers that only ever set text.
 *
 * Every value from the server reaches the page through textContent or a
 * safe attribute (title, class from a fixed set, data-*): never as HTML.
 */
'use strict';

var PJ = (function () {
    var token = new URLSearchParams(location.hash.slice(1)).get('token') || '';
    var stats = { gets: {}, feeds: 0 };

    /* another token in the address bar: start again with it */
    window.addEventListener('hashchange', function () {
        location.reload();
    });

    function el(tag, cls, text) {
        var e = document.createElement(tag);
        if (cls) {
            e.className = cls;
        }
        if (text !== undefined && text !== null) {
            e.textContent = String(text);
        }
        return e;
    }

    function showError(msg) {
        var e = document.getElementById('error');
        e.textContent = msg;
        e.hidden = false;
        document.getElementById('main').hidden = true;
        setConn('');
    }

    function setConn(state) {
        var c = document.getElementById('conn');
        if (c) {
            c.textContent = state;
            c.className = 'conn' + (state ? ' conn-' + state : '');
        }
    }

    /* The server's error: {"error": ["message"]} or {"error": "message"} */
    function errorText(status, body) {
        var m = '';
        try {
            var j = JSON.parse(body);
            m = Array.isArray(j.error) ? j.error.join('; ') : String(j.error);
        } catch (e) {
            m = body.slice(0, 200);
        }
        return status + ' ' + (m || 'error');
    }

    function HttpError(status, text) {
        this.status = status;
        this.message = text;
    }

    function headers(accept, extra) {
        var h = { 'Accept': accept, 'Authorization': 'Bearer ' + token };
        for (var k in extra || {}) {
            h[k] = extra[k];
        }
        return h;
    }

    function get(path, accept) {
        stats.gets[path] = (stats.gets[path] || 0) + 1;
        return fetch(path, {
            headers: headers(accept || 'application/json'),
            cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer'
        }).then(function (r) {
            if (!r.ok) {
                return r.text().then(function (t) {
                    throw new HttpError(r.status, errorText(r.status, t));
                });
            }
            return r;
        });
    }

    function getJSON(path) {
        return get(path).then(function (r) { return r.json(); });
    }

    /*
     * Follow an event feed: opts.onEvent(name, data, id) per event,
     * opts.onOpen() before the first event of each connection (the page
     * re-syncs there), opts.done() true when the feed ended for good;
     * a dropped connection is resumed with Last-Event-ID after a bounded
     * backoff (0.5 s doubling to 10 s). A 4xx is final: opts.onError.
     */
    function feed(path, opts) {
        var lastId = null, backoff = 500;

        function connect() {
            var h = headers('text/event-stream');
            if (lastId !== null) {
                h['Last-Event-ID'] = lastId;
            }
            stats.feeds++;
            setConn('connecting');
            /* a feed says ":keepalive" every 15 s: 45 s of silence is a
             * connection lost without a word (a dead link, a suspended
             * laptop), ended here to be opened again */
            var ctl = new AbortController(), watchdog = null;
            var alive = function () {
                clearTimeout(watchdog);
                watchdog = setTimeout(function () { ctl.abort(); }, 45000);
            };
            alive();
            fetch(path, { headers: h, cache: 'no-store', credentials: 'omit',
                          referrerPolicy: 'no-referrer', signal: ctl.signal })
            .then(function (r) {
                if (!r.ok) {
                    return r.text().then(function (t) {
                        throw new HttpError(r.status, errorText(r.status, t));
                    });
                }
                return Promise.resolve(opts.onOpen ? opts.onOpen() : null)
                    .then(function () {
                        return read(r.body.getReader(), alive);
                    });
            })
            .finally(function () { clearTimeout(watchdog); })
            .then(function () {
                if (opts.done && opts.done()) {
                    setConn('ended');
                    return;
                }
                retry();
            }, function (err) {
                if (err instanceof HttpError && err.status >= 400
                    && err.status < 500)
                {
                    opts.onError(err);
                    return;
                }
                retry();
            });
        }

        function retry() {
            setConn('reconnecting');
            setTimeout(connect, backoff);
            backoff = Math.min(backoff * 2, 10000);
        }

        function read(reader, alive) {
            var dec = new TextDecoder('utf-8'), buf = '';
            var ev = { name: '', data: [], id: null };
            setConn('live');

            function line(l) {
                if (l === '') {
                    if (ev.id !== null) {
                        lastId = ev.id;
                    }
                    if (ev.data.length) {
                        var data = null;
                        try {
                            data = JSON.parse(ev.data.join('\n'));
                        } catch (e) {
                            data = null;
                        }
                        if (data !== null) {
                            backoff = 500;
                            opts.onEvent(ev.name || 'message', data, ev.id);
                        }
                    }
                    ev = { name: '', data: [], id: null };
                    return;
                }
                if (l.charAt(0) === ':') {
                    return;                 /* a comment: keepalive */
                }
                var i = l.indexOf(':');
                var f = i < 0 ? l : l.slice(0, i);
                var v = i < 0 ? '' : l.slice(i + 1);
                if (v.charAt(0) === ' ') {
                    v = v.slice(1);
                }
                if (f === 'event') {
                    ev.name = v;
                } else if (f === 'data') {
                    ev.data.push(v);
                } else if (f === 'id') {
                    ev.id = v;
                }
            }

            function pump() {
                return reader.read().then(function (r) {
                    if (r.done) {
                        return;
                    }
                    alive();
                    buf += dec.decode(r.value, { stream: true });
                    var m;
                    while ((m = /\r\n|\r|\n/.exec(buf)) !== null) {
                        line(buf.slice(0, m.index));
                        buf = buf.slice(m.index + m[0].length);
                    }
                    return pump();
                });
            }
            return pump();
        }

        connect();
    }

    function fmtTime(t) {
        return t === undefined || t === null ? '' : String(t);
    }

    return { token: token, stats: stats, el: el, get: get, getJSON: getJSON,
             feed: feed, showError: showError, setConn: setConn,
             fmtTime: fmtTime };
})();
