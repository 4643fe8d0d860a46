/*
 * The one-line JSON error both C programs print on stderr before they exit: the same shape as
 * the Node side's log lines, so libvirt's domain log and `virsh start` show one format.
 * Header-only (each program is one translation unit, built static).
 */
#ifndef QK_JSON_ERROR_H
#define QK_JSON_ERROR_H

#include <stdio.h>

#define EX_USAGE 64
#define EX_OSERR 71
#define EX_CONFIG 78

static void qk_json_str(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(stderr, "\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			fprintf(stderr, "\\u%04x", c);
		else
			fputc(c, stderr);
	}
}

/* {"level":"error","code":"<prefix><code>","msg":"...","hint":"..."} and a newline. */
static void qk_json_error(const char *prefix, const char *code, const char *msg, const char *hint)
{
	fputs("{\"level\":\"error\",\"code\":\"", stderr);
	qk_json_str(prefix);
	qk_json_str(code);
	fputs("\",\"msg\":\"", stderr);
	qk_json_str(msg);
	fputs("\",\"hint\":\"", stderr);
	qk_json_str(hint);
	fputs("\"}\n", stderr);
	fflush(stderr);
}

#endif
