#include "rpn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define RPN_STACK_MAX 64

enum rpn_status rpn_eval(const char *expression, double *result)
{
    double stack[RPN_STACK_MAX];
    size_t depth = 0;
    const char *p = expression;

    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            break;
        size_t len = strcspn(p, " \t");
        if (len == 1 && strchr("+-*/^", *p)) {
            if (depth < 2)
                return RPN_STACK_UNDERFLOW;
            double b = stack[--depth];
            double a = stack[--depth];
            double value;
            switch (*p) {
            case '+': value = a + b; break;
            case '-': value = a - b; break;
            case '*': value = a * b; break;
            case '/':
                if (b == 0.0)
                    return RPN_DIVISION_BY_ZERO;
                value = a / b;
                break;
            default: value = pow(a, b); break;
            }
            stack[depth++] = value;
        } else {
            char *end;
            double value = strtod(p, &end);
            if (end != p + len)
                return RPN_BAD_TOKEN;
            if (depth == RPN_STACK_MAX)
                return RPN_STACK_OVERFLOW;
            stack[depth++] = value;
        }
        p += len;
    }
    if (depth == 0)
        return RPN_EMPTY;
    if (depth > 1)
        return RPN_LEFTOVER_VALUES;
    *result = stack[0];
    return RPN_OK;
}

const char *rpn_status_text(enum rpn_status status)
{
    switch (status) {
    case RPN_OK: return "ok";
    case RPN_STACK_UNDERFLOW: return "an operator needs two values";
    case RPN_STACK_OVERFLOW: return "too many values";
    case RPN_BAD_TOKEN: return "not a number or operator";
    case RPN_DIVISION_BY_ZERO: return "division by zero";
    case RPN_LEFTOVER_VALUES: return "values left without an operator";
    case RPN_EMPTY: return "empty expression";
    }
    return "unknown status";
}
